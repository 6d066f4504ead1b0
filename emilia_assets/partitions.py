import dagster as dg

# One partition per batch of episodes (a manifest), never per episode: catalogues hold millions of episodes and
# Dagster is built for thousands of partitions (docs/batch-runs.md says why).
episode_batches = dg.DynamicPartitionsDefinition(name="episode_batches")

# Sources are partitions too: one per podcast feed or YouTube channel/playlist, keyed `feed-<sha256(url)[:12]>` /
# `yt-<...>` (sources/registry/<key>.json maps a key back to its URL). Backfills group many sources per run.
podcast_feeds = dg.DynamicPartitionsDefinition(name="podcast_feeds")
youtube_sources = dg.DynamicPartitionsDefinition(name="youtube_sources")
