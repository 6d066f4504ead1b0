import dagster as dg

from emilia_assets.assets.ingest import raw_episodes
from emilia_assets.assets.process import processed_segments
from emilia_assets.assets.publish import hf_shards
from emilia_assets.partitions import episode_batches, podcast_feeds, youtube_sources

# One batch = one run = one GPU pod: probing and the Emilia pipe run in the same process, so models load once and
# downloads are shared between the steps.
emilia_job = dg.define_asset_job(
    "emilia_job",
    selection=dg.AssetSelection.assets(raw_episodes, processed_segments),
    partitions_def=episode_batches,
    executor_def=dg.in_process_executor,
    description="Raw audio of one batch to processed segments: probe, then the Emilia pipe.",
)

# Publishing needs no GPU: its own run (launched by publish_sensor once a batch's segments are done), so a slow or
# rate-limited Hub never holds a GPU pod.
publish_job = dg.define_asset_job(
    "publish_job",
    selection=dg.AssetSelection.assets(hf_shards),
    partitions_def=episode_batches,
    executor_def=dg.in_process_executor,
    description="Pack one batch's segments into WebDataset shards and publish them.",
)

# Ingest jobs: several sources per run (ranged runs), downloads only, no GPU.
podcast_ingest_job = dg.define_asset_job(
    "podcast_ingest_job",
    selection=dg.AssetSelection.assets("podcast_episodes"),
    partitions_def=podcast_feeds,
    executor_def=dg.in_process_executor,
)
youtube_ingest_job = dg.define_asset_job(
    "youtube_ingest_job",
    selection=dg.AssetSelection.assets("youtube_audio"),
    partitions_def=youtube_sources,
    executor_def=dg.in_process_executor,
)
