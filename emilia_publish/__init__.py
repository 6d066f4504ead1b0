"""Publishing (no Dagster here): the release writer (`release`, with its `summary`, `lock` and `parquet`), the
WebDataset shards' index, the dataset card, the publish filters and the Hugging Face upload."""
