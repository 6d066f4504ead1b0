"""Where each artefact of a batch lives in the object store (DESIGN.md, "Storage layout")."""

from __future__ import annotations

from emilia_pipe.keys import join


def probes_key(batch_id: str) -> str:
    return f"manifests/probes/{batch_id}.parquet"


def episode_dir(processed_prefix: str, language: str, episode_id: str) -> str:
    return join(processed_prefix, language, episode_id) + "/"


def episode_done_key(processed_prefix: str, episode_id: str) -> str:
    """Written after `all_segments.json`: says the episode is complete and where its output is.

    The language of an episode is known only after ASR, so a resumed run finds finished episodes by id here.
    """
    return join(processed_prefix, "_episodes", f"{episode_id}.json")


def batch_status_key(processed_prefix: str, batch_id: str) -> str:
    """One row per episode of the batch: status, error, counts."""
    return join(processed_prefix, "_batches", f"{batch_id}.parquet")


def batch_segments_key(processed_prefix: str, batch_id: str) -> str:
    """One row per segment of the batch: the catalogue that polars queries and the publisher reads."""
    return join(processed_prefix, "_batches", f"{batch_id}.segments.parquet")


def shard_prefix(language: str, batch_id: str) -> str:
    return join("shards", language, batch_id) + "-"


def shard_key(language: str, batch_id: str, n: int) -> str:
    return f"{shard_prefix(language, batch_id)}{n:05d}.tar"


INDEX_PREFIX = "index/"
CARD_PREFIX = "card/"


def index_key(batch_id: str) -> str:
    """One row per published sample of the batch; the same path in the store and in the Hub repo."""
    return f"{INDEX_PREFIX}{batch_id}.parquet"


def checksums_key(batch_id: str) -> str:
    """Shard-level checksums (shard, bytes, samples, sha256), beside the index; not part of the sample index."""
    return f"{INDEX_PREFIX}{batch_id}.shards.parquet"
