import dagster as dg

# One partition per batch of episodes (a manifest), never per episode: catalogues hold millions of episodes and
# Dagster is built for thousands of partitions. See DESIGN.md, "The unit of work".
episode_batches = dg.DynamicPartitionsDefinition(name="episode_batches")
