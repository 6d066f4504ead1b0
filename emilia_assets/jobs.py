import dagster as dg

from emilia_assets.assets.ingest import raw_episodes
from emilia_assets.assets.process import processed_segments
from emilia_assets.assets.publish import hf_shards
from emilia_assets.partitions import episode_batches, podcast_feeds, youtube_sources

# One batch = one run: ingest probe, the GPU stage and packing run in the same process, so models load once and
# downloads are shared between steps.
emilia_job = dg.define_asset_job(
    "emilia_job",
    selection=dg.AssetSelection.assets(raw_episodes, processed_segments, hf_shards),
    partitions_def=episode_batches,
    executor_def=dg.in_process_executor,
    description="Raw audio of one batch to WebDataset shards: probe, Emilia pipe, pack.",
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
