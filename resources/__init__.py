"""Dagster resources: each builds a Dagster-free object (store, pipe settings, batching limits, Hub target)."""
