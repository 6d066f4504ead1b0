"""Publishing: WebDataset shards, index, dataset card and the Hugging Face upload (no Dagster here)."""
