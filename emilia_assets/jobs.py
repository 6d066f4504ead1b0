import dagster as dg

from emilia_assets.assets.ingest import raw_episodes
from emilia_assets.assets.publish import hf_shards
from emilia_assets.partitions import episode_batches, podcast_feeds, youtube_sources
from emilia_assets.placement import GPU_RUN_K8S_CONFIG, k8s_config_tags

# Run retries, as deploy/dagster.yaml sets them for every run (these tags say it where the instance does not, e.g. a
# Dagster+ deployment): a run that failed without a failed step (its pod lost) is re-executed twice at most, and each
# re-execution resumes; a run whose step failed is not retried as a run, since the step had its own retries.
RUN_RETRY_TAGS = {"dagster/max_retries": "2", "dagster/retry_on_asset_or_op_failure": "false"}

# Probing a batch needs no GPU: its own run in the CPU location (emilia_forge), launched by raw_audio_sensor.
probe_job = dg.define_asset_job(
    "probe_job",
    selection=dg.AssetSelection.assets(raw_episodes),
    partitions_def=episode_batches,
    executor_def=dg.in_process_executor,
    tags=RUN_RETRY_TAGS,
    description="Probe every file of one batch (duration, codec, rate) on a CPU pod.",
)

# One batch = one run = one GPU pod, in the GPU location (emilia_gpu), launched by gpu_batch_sensor once the batch's
# probe has materialized. The location's container context already places every run of it on an 8-GPU pod (the UI's
# Materialize included); the tag repeats it for deployments that configure placement per job (Dagster+).
emilia_job = dg.define_asset_job(
    "emilia_job",
    selection=dg.AssetSelection.assets("processed_segments"),
    partitions_def=episode_batches,
    executor_def=dg.in_process_executor,
    tags={**k8s_config_tags(GPU_RUN_K8S_CONFIG), **RUN_RETRY_TAGS},
    description="The Emilia pipe over one probed batch, on an 8-GPU pod.",
)

# Publishing needs no GPU: its own run (launched by publish_sensor once a batch's segments are done), so a slow or
# rate-limited Hub never holds a GPU pod.
publish_job = dg.define_asset_job(
    "publish_job",
    selection=dg.AssetSelection.assets(hf_shards),
    partitions_def=episode_batches,
    executor_def=dg.in_process_executor,
    tags=RUN_RETRY_TAGS,
    description="Pack one batch's segments into WebDataset shards and publish them.",
)

# Ingest jobs: several sources per run (ranged runs), downloads only, no GPU.
podcast_ingest_job = dg.define_asset_job(
    "podcast_ingest_job",
    selection=dg.AssetSelection.assets("podcast_episodes"),
    partitions_def=podcast_feeds,
    executor_def=dg.in_process_executor,
    tags=RUN_RETRY_TAGS,
)
youtube_ingest_job = dg.define_asset_job(
    "youtube_ingest_job",
    selection=dg.AssetSelection.assets("youtube_audio"),
    partitions_def=youtube_sources,
    executor_def=dg.in_process_executor,
    tags=RUN_RETRY_TAGS,
)
