"""Where each artefact of a batch lives in the object store (the README's "What happens" shows it)."""

from __future__ import annotations

import hashlib

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


def batch_summary_key(processed_prefix: str, batch_id: str) -> str:
    """The batch's figures for operators (emilia_pipe.batch_report), small enough to read for every batch."""
    return join(processed_prefix, "_batches", f"{batch_id}.summary.json")


def shard_prefix(language: str, batch_id: str) -> str:
    return join("shards", language, batch_id) + "-"


def shard_key(language: str, batch_id: str, n: int) -> str:
    return f"{shard_prefix(language, batch_id)}{n:05d}.tar"


def parquet_key(language: str, batch_id: str, n: int) -> str:
    """The same samples as `shard_key(...)`, as Parquet with the audio bytes inside (the Hub's viewer plays it)."""
    return f"{shard_prefix(language, batch_id)}{n:05d}.parquet"


def repo_path(store_key: str) -> str:
    """Where a shard or Parquet file of the store (`shards/<lang>/<file>`) lives in the Hub repo (`data/<lang>/...`);
    index files keep their path."""
    return "data/" + store_key[len("shards/"):] if store_key.startswith("shards/") else store_key


def store_key_of(path_in_repo: str) -> str:
    """The inverse of `repo_path`."""
    return "shards/" + path_in_repo[len("data/"):] if path_in_repo.startswith("data/") else path_in_repo


REPORTS_PREFIX = "reports/"


def dataset_report_key(name: str) -> str:
    """The dataset report's files (emilia_publish.dataset_report): report.json, report.md and its PNG plots."""
    return f"{REPORTS_PREFIX}dataset/{name}"


INDEX_PREFIX = "index/"
CARD_PREFIX = "card/"
# The release writer's own state, in the store only (emilia_publish.release): the summary, the lock, one pointer per
# raw-audio key (which episode version the release holds), and the record of a commit not yet applied.
RELEASE_PREFIX = "release/"
RELEASE_SUMMARY_KEY = f"{RELEASE_PREFIX}summary.json"
RELEASE_LOCK_KEY = f"{RELEASE_PREFIX}lock.json"


def index_key(batch_id: str) -> str:
    """One row per published sample of the batch; the same path in the store and in the Hub repo."""
    return f"{INDEX_PREFIX}{batch_id}.parquet"


def checksums_key(batch_id: str) -> str:
    """File checksums of the batch (path in the repo, bytes, samples, sha256), for its tars and Parquet files. In a
    folder of its own, so that `index/*.parquet` is the sample index alone."""
    return f"{INDEX_PREFIX}shards/{batch_id}.parquet"


def legacy_checksums_key(batch_id: str) -> str:
    """Where checksums lived before `checksums_key` (`index/<batch>.shards.parquet`)."""
    return f"{INDEX_PREFIX}{batch_id}.shards.parquet"


def release_pointer_key(audio_key: str) -> str:
    """The release's pointer for one raw-audio key: the episode (version) it holds and that episode's contribution."""
    h = hashlib.sha256(audio_key.encode("utf-8")).hexdigest()
    return f"{RELEASE_PREFIX}episodes/{h[:2]}/{h[:40]}.json"


def release_pending_key(generation: int) -> str:
    """What commit `generation` does to pointers and earlier batches, written before the commit, applied after."""
    return f"{RELEASE_PREFIX}pending/{generation:012d}.json"
