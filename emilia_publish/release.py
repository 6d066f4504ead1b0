"""The release writer: one batch into the release, incrementally, never leaving a state later runs cannot publish on.

The release is the batches' files (`shards/<lang>/<batch>-<n>.tar` and `.parquet`, `index/<batch>.parquet`,
`index/shards/<batch>.parquet`), the card, and the writer's own state under `release/` (store only):

- `release/summary.json`: counts for the card (emilia_publish.summary), a generation number, the commit not yet
  applied (`pending`) and the files not yet on the Hub (`hub`). Its size does not grow with the number of batches.
- `release/episodes/<h>/<hash>.json`: one pointer per raw-audio key, naming the episode (the object's version) the
  release holds, its batch, and what it contributed to the summary (so it can be subtracted again).
- `release/lock.json`: the writer's lease (emilia_publish.lock).

Publishing batch B (`publish_batch`) reads B's catalogue, status table and manifest, the summary, and one pointer per
episode of B, plus the index of each earlier batch one of B's episodes supersedes: never all batches. The rule, for
each raw-audio key: the release holds one episode, the one with the newest object (`modified`), and among episodes of
the same object the one from the newest batch (an explicit re-processing makes a newer batch). So a changed object's
new episode supersedes the old one, whose segments leave their batch's files; an episode older than what the release
holds is left out of B's files and reported, never a duplicate and never an error that stops later publishing.

Order of writes: everything is decided and validated first (no write); then B's own tars and Parquet files are
written (nothing refers to them yet), and the commit's effects are staged (`release/pending/<gen>.json`); the commit
is one compare-and-swap of the summary (generation g -> g+1, `pending` set); then the commit is applied: B's index
and checksums, the earlier batches' rewrites, the pointers, and the summary without `pending`. Applying is
idempotent, so a writer that dies after the commit leaves work the next writer finishes before its own; a writer
that dies before it leaves only files no index refers to. The card is rendered from the summary afterwards, and the
Hub gets B's files, the rewritten ones and the card, and loses the emptied shards.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from emilia_pipe.batching import read_manifest
from emilia_pipe.shards import Sample, plan_shards, write_shard
from emilia_publish import summary as summ
from emilia_publish.card import render_card
from emilia_publish.filters import PublishFilters, apply_filters
from emilia_publish.hub import UploadReport
from emilia_publish.index import (
    CHECKSUM_SCHEMA,
    checksums_from_parquet,
    checksums_to_parquet,
    index_frame,
    index_from_parquet,
    index_to_parquet,
    shard_checksums,
)
from emilia_publish.lock import ReleaseLock
from emilia_publish.parquet import read_tar_samples, shard_to_parquet
from emilia_store import ObjectStore, PreconditionFailed, iter_objects, read_parquet
from emilia_store.layout import (
    CARD_PREFIX,
    INDEX_PREFIX,
    RELEASE_SUMMARY_KEY,
    batch_segments_key,
    batch_status_key,
    checksums_key,
    index_key,
    legacy_checksums_key,
    parquet_key,
    release_pending_key,
    release_pointer_key,
    repo_path,
    shard_key,
    shard_prefix,
)

CARD_KEY = f"{CARD_PREFIX}README.md"
FIGURE_KEY = f"{CARD_PREFIX}assets/distributions.png"
TEST_RELEASE_HINT = "set `test_release: true` in hf_shards' config or HF_TEST_RELEASE=1 for a test release"
# (repo path -> local file, repo paths to delete, commit message, heartbeat to call now and then) -> report
Upload = Callable[[dict[str, Path], list[str], str, Callable[[], None]], UploadReport]


class ReleaseRefused(ValueError):
    """The batch may not go into this release (random-weight output without the test-release flag)."""


class ReleaseConflict(RuntimeError):
    """The release changed under this writer (its lock was taken over): nothing of this commit was applied."""


@dataclass(frozen=True)
class PublishSettings:
    """How a batch is published. `test_release` lets output of random-weight models (`models tiny`) in."""

    processed_prefix: str = "processed/"
    filters: PublishFilters = field(default_factory=PublishFilters)
    max_shard_bytes: int = 512 * 2**20
    max_shard_samples: int = 10_000
    test_release: bool = False
    repo_id: str = "emilia-forge/dataset"
    license: str = "cc-by-nc-4.0"
    lock_ttl_s: float = 1800.0
    lock_wait_s: float = 6 * 3600.0
    lock_poll_s: float = 2.0


@dataclass
class Claim:
    """One episode of the batch being published, as its manifest names it."""

    audio_key: str
    episode_id: str
    version: str
    modified: float
    batch_id: str
    processed: bool  # done or resumed in the batch's status table


@dataclass
class Decision:
    """What the rule decided for one raw-audio key of the batch."""

    claim: Claim
    pointer: dict[str, Any] | None
    outcome: str  # new | replaces | supersedes | stale | withdrawn | unchanged

    def describe(self) -> str:
        c, p = self.claim, self.pointer or {}
        held = f"episode {p.get('episode_id')} (batch {p.get('batch_id')}, version {p.get('version') or '?'})"
        mine = f"episode {c.episode_id} (version {c.version or '?'})"
        return {
            "new": f"{c.audio_key}: {mine} enters the release",
            "replaces": f"{c.audio_key}: {mine} is published again (re-run of batch {c.batch_id})",
            "supersedes": f"{c.audio_key}: {mine} supersedes {held}",
            "stale": f"{c.audio_key}: {mine} is older than the release's {held}: left out",
            "withdrawn": f"{c.audio_key}: {mine} failed in this run of batch {c.batch_id}: it leaves the release",
            "unchanged": f"{c.audio_key}: {mine} was not processed; the release keeps {held}",
        }[self.outcome]


@dataclass
class PublishOutcome:
    batch_id: str
    generation: int
    files: pl.DataFrame  # the batch's checksums: shard (repo path), bytes, samples, sha256
    samples: int
    hours: float
    dropped_by_filters: dict[str, int]
    decisions: list[Decision]
    rewritten_batches: list[str]
    release_samples: int
    test_release: bool
    upload: UploadReport | None = None
    lock_waited_s: float = 0.0

    def count(self, outcome: str) -> int:
        return sum(d.outcome == outcome for d in self.decisions)


# ---- the batch's inputs -----------------------------------------------------------------------------------------


@dataclass
class BatchInput:
    batch_id: str
    segments: pl.DataFrame  # the catalogue after the publish filters, sorted by id
    dropped: dict[str, int]
    claims: list[Claim]
    model_docs: dict[str, Any]


def sample_meta(row: dict) -> dict:
    """The released Emilia fields (id, wav, text, duration, speaker, language, dnsmos) plus provenance."""
    return {
        "id": row["id"], "wav": f"{row['id']}.mp3", "text": row["text"] or "", "duration": row["duration"],
        "speaker": row["speaker"], "language": row["language"], "dnsmos": row["dnsmos_ovrl"],
        "start": row["start"], "end": row["end"], "episode_id": row["episode_id"], "source": row["source"],
        "batch_id": row["batch_id"], "dnsmos_sig": row["dnsmos_sig"], "dnsmos_bak": row["dnsmos_bak"],
        "dnsmos_ovrl": row["dnsmos_ovrl"], "language_probability": row["language_probability"],
        "license": row.get("license"), "model_set": row.get("model_set"), "code_version": row.get("code_version"),
    }


def _optional(frame: pl.DataFrame, columns: dict[str, pl.DataType]) -> pl.DataFrame:
    return frame.with_columns(pl.lit(None, t).alias(c) for c, t in columns.items() if c not in frame.columns)


def load_batch(store: ObjectStore, batch_id: str, settings: PublishSettings) -> BatchInput:
    """The batch's catalogue (filtered), and one claim per manifest row. Reads three tables of this batch only."""
    from emilia_pipe.catalogue import SEGMENT_SCHEMA

    key = batch_segments_key(settings.processed_prefix, batch_id)
    try:
        catalogue = read_parquet(store, key)
    except KeyError:
        raise FileNotFoundError(f"batch {batch_id!r} has no segment catalogue at {key}: "
                                "materialize processed_segments first") from None
    catalogue = _optional(catalogue, SEGMENT_SCHEMA).sort("id")
    segments, dropped = apply_filters(catalogue, settings.filters)
    manifest = read_manifest(store, batch_id)
    manifest = _optional(manifest, {"version": pl.String(), "modified": pl.Float64()})
    try:
        status = read_parquet(store, batch_status_key(settings.processed_prefix, batch_id))
        ok = set(status.filter(pl.col("status").is_in(["done", "resumed"]))["episode_id"].to_list())
    except KeyError:  # a batch processed before status tables: what has segments was processed
        ok = set(catalogue["episode_id"].to_list())
    claims = [
        Claim(r["audio_key"], r["episode_id"], r["version"] or "", float(r["modified"] or 0.0), batch_id,
              r["episode_id"] in ok)
        for r in manifest.iter_rows(named=True)
    ]
    docs = {r["model_set"]: json.loads(r["models"])
            for r in catalogue.filter(pl.col("model_set").is_not_null()).unique("model_set").iter_rows(named=True)
            if r["models"]}
    return BatchInput(batch_id, segments, dropped, claims, docs)


def random_weight_problem(segments: pl.DataFrame, docs: dict[str, Any], batch_id: str) -> str | None:
    """Why the batch cannot go into a real release (random-weight output), or None."""
    tiny = segments.filter(pl.col("model_kind") == "tiny")
    if tiny.is_empty():
        return None
    sets = sorted(set(tiny["model_set"].drop_nulls().to_list()))
    names = "; ".join(", ".join(f"{f}={m.get('name')}" for f, m in sorted(docs.get(s, {}).get("models", {}).items()))
                      for s in sets)
    return (f"batch {batch_id}: {tiny.height} of {segments.height} segments were made by random-weight models "
            f"(model set {', '.join(sets) or '?'}, kind tiny: {names or 'models tiny'}). A release refuses them: "
            f"{TEST_RELEASE_HINT}.")


# ---- pointers and decisions ------------------------------------------------------------------------------------


def read_pointer(store: ObjectStore, audio_key: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(store.get_bytes(release_pointer_key(audio_key)))
    except KeyError:
        return None
    except ValueError as err:
        raise ValueError(f"{store.describe()}: release pointer of {audio_key} "
                         f"({release_pointer_key(audio_key)}) is not JSON: {err}") from None
    if doc.get("audio_key") != audio_key:
        raise ValueError(f"{store.describe()}: release pointer {release_pointer_key(audio_key)} names "
                         f"{doc.get('audio_key')!r}, not {audio_key!r}")
    return doc


def _newer(claim: Claim, pointer: dict[str, Any]) -> bool:
    """The rule: the newest object wins; for the same object, the newest batch (a re-processing) wins."""
    return (claim.modified, claim.batch_id) > (float(pointer.get("modified") or 0.0), str(pointer.get("batch_id")))


def decide(claims: Iterable[Claim], pointers: dict[str, dict[str, Any] | None]) -> list[Decision]:
    out = []
    for c in claims:
        p = pointers.get(c.audio_key)
        if not c.processed:
            own = p is not None and p.get("batch_id") == c.batch_id and p.get("episode_id") == c.episode_id
            out.append(Decision(c, p, "withdrawn" if own else "unchanged"))
        elif p is None:
            out.append(Decision(c, p, "new"))
        elif p.get("batch_id") == c.batch_id and p.get("episode_id") == c.episode_id:
            out.append(Decision(c, p, "replaces"))
        elif _newer(c, p):
            out.append(Decision(c, p, "supersedes"))
        else:
            out.append(Decision(c, p, "stale"))
    return out


# ---- building the batch's files ---------------------------------------------------------------------------------


@dataclass
class BuiltBatch:
    index: pl.DataFrame
    checksums: pl.DataFrame
    local: dict[str, Path]  # store key -> local file (tars and Parquet)
    stale_files: list[str]  # store keys of the batch's earlier files this build no longer has
    previous_files: pl.DataFrame  # the batch's previous checksums (empty when it was never published)


def _read_checksums(store: ObjectStore, batch_id: str) -> pl.DataFrame:
    for key in (checksums_key(batch_id), legacy_checksums_key(batch_id)):
        try:
            return checksums_from_parquet(store.get_bytes(key))
        except KeyError:
            continue
    return pl.DataFrame(schema=CHECKSUM_SCHEMA)


def _language_of(path_in_repo: str) -> str:
    parts = path_in_repo.split("/")
    return parts[1] if len(parts) >= 3 else "und"


def build_batch(store: ObjectStore, batch: BatchInput, segments: pl.DataFrame, winners: dict[str, Claim],
                settings: PublishSettings, work: Path, tick: Callable[[], None] = lambda: None) -> BuiltBatch:
    """The batch's tars, Parquet files, index and checksums, locally; then the tars and Parquet files into the store
    (the batch's own keys, which no index refers to before the commit)."""
    batch_id = batch.batch_id
    shard_of: dict[str, str] = {}
    local: dict[str, Path] = {}
    by_episode = {c.episode_id: c for c in winners.values()}
    for (language,), rows in segments.group_by(["language"], maintain_order=True):
        by_id = {r["id"]: r for r in rows.iter_rows(named=True)}
        sizes: dict[str, int] = {}
        for prefix in sorted({k.rsplit("/", 1)[0] + "/" for k in rows["mp3_key"]}):
            sizes.update({o.key: o.size for o in iter_objects(store, prefix)})
        plan = plan_shards(((k, sizes.get(by_id[k]["mp3_key"], 0)) for k in sorted(by_id)),
                           settings.max_shard_bytes, settings.max_shard_samples)
        for n, shard in enumerate(plan):
            tar_key, pq_key = shard_key(language, batch_id, n), parquet_key(language, batch_id, n)
            tar_path, pq_path = work / tar_key, work / pq_key
            tar_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                write_shard(tar_path, (Sample(k, store.get_bytes(by_id[k]["mp3_key"]), sample_meta(by_id[k]))
                                       for k in shard))
            except KeyError as err:
                raise FileNotFoundError(f"batch {batch_id}: segment audio {err} is missing from the store") from None
            shard_to_parquet(tar_path, pq_path)
            local[tar_key], local[pq_key] = tar_path, pq_path
            tick()
            shard_of.update(dict.fromkeys(shard, tar_key))
    rows = []
    for r in segments.iter_rows(named=True):
        claim = by_episode[r["episode_id"]]
        rows.append({**sample_meta(r), "audio_key": claim.audio_key, "episode_version": claim.version,
                     "model_kind": r.get("model_kind")})
    index = index_frame(rows, shard_of, batch_id=batch_id)
    checksums = shard_checksums({repo_path(k): p for k, p in local.items()})
    previous = _read_checksums(store, batch_id)
    now = set(local)
    stale = sorted({_store_key(p) for p in previous["shard"].to_list()} - now)
    # B's previous tail may also hold files the checksums never listed (a run that died before them)
    for language in {_language_of(p) for p in previous["shard"].to_list()} | set(segments["language"].unique()):
        for obj in iter_objects(store, shard_prefix(language, batch_id)):
            if obj.key not in now and obj.key not in stale:
                stale.append(obj.key)
    for key, path in sorted(local.items()):
        store.put_file(path, key)
        tick()
    return BuiltBatch(index, checksums, local, sorted(stale), previous)


def _store_key(path_in_repo: str) -> str:
    from emilia_store.layout import store_key_of

    return store_key_of(path_in_repo)


# ---- rewriting an earlier batch without superseded episodes ------------------------------------------------------


def _tar_counts(paths: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in paths:
        if p.endswith(".tar"):
            out[_language_of(p)] = out.get(_language_of(p), 0) + 1
    return out


def read_index(store: ObjectStore, batch_id: str) -> pl.DataFrame | None:
    try:
        return index_from_parquet(store.get_bytes(index_key(batch_id)))
    except KeyError:
        return None


def emptied_shards(index: pl.DataFrame, episodes: set[str]) -> list[str]:
    """Shards (store keys) of a batch index that dropping `episodes` leaves without a sample."""
    marked = index.with_columns(pl.col("episode_id").is_in(list(episodes)).alias("drop"))
    return sorted(marked.group_by("shard").agg(pl.col("drop").all()).filter(pl.col("drop"))["shard"].to_list())


def drop_episodes(store: ObjectStore, batch_id: str, episodes: set[str], work: Path,
                  log: Callable[[str], object]) -> tuple[list[str], list[str]]:
    """Rewrite an earlier batch without `episodes`: its tars and Parquet files, checksums, and its index last.

    Idempotent (what is already gone stays gone); returns (store keys rewritten, store keys deleted)."""
    index = read_index(store, batch_id)
    if index is None:
        return [], []
    doomed = index.filter(pl.col("episode_id").is_in(list(episodes)))
    if doomed.is_empty():
        return [], []
    keep = index.filter(~pl.col("episode_id").is_in(list(episodes)))
    changed: list[str] = []
    deleted: list[str] = []
    rewritten: dict[str, Path] = {}
    for tar_key in sorted(doomed["shard"].unique().to_list()):
        pq_key = tar_key[: -len(".tar")] + ".parquet"
        wanted = set(keep.filter(pl.col("shard") == tar_key)["key"].to_list())
        if not wanted:
            for key in (tar_key, pq_key):
                store.delete(key)
                deleted.append(key)
            continue
        src = work / "old" / tar_key
        src.parent.mkdir(parents=True, exist_ok=True)
        try:
            store.get_file(tar_key, src)
        except KeyError:
            raise FileNotFoundError(f"batch {batch_id}: shard {tar_key} is missing but its index still lists "
                                    f"{len(wanted)} samples to keep") from None
        samples = [s for s in read_tar_samples(src) if s[0] in wanted]
        missing = wanted - {s[0] for s in samples}
        if missing:
            raise ValueError(f"batch {batch_id}: shard {tar_key} lacks samples its index lists: {sorted(missing)[:5]}")
        dst = work / "new" / tar_key
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_shard(dst, (Sample(k, mp3, meta) for k, mp3, meta in samples))
        pq = dst.with_suffix(".parquet")
        shard_to_parquet(dst, pq)
        for key, path in ((tar_key, dst), (pq_key, pq)):
            store.put_file(path, key)
            changed.append(key)
            rewritten[repo_path(key)] = path
    sums = _read_checksums(store, batch_id)
    gone = {repo_path(k) for k in deleted} | set(rewritten)
    sums = pl.concat([sums.filter(~pl.col("shard").is_in(list(gone))), shard_checksums(rewritten)]).sort("shard")
    store.put_bytes(checksums_key(batch_id), checksums_to_parquet(sums))
    store.put_bytes(index_key(batch_id), index_to_parquet(keep))  # last: says the rewrite is complete
    changed += [checksums_key(batch_id), index_key(batch_id)]
    log(f"release: batch {batch_id}: {doomed.height} superseded samples of {len(set(doomed['episode_id']))} "
        f"episode(s) removed, {len(deleted) // 2} shard(s) emptied")
    return changed, deleted


# ---- the summary in the store --------------------------------------------------------------------------------------


def read_summary(store: ObjectStore) -> tuple[dict[str, Any] | None, str | None]:
    try:
        data, token = store.get_versioned(RELEASE_SUMMARY_KEY)
    except KeyError:
        return None, None
    return summ.loads(data, f"{store.describe()}: {RELEASE_SUMMARY_KEY}"), token


def write_summary(store: ObjectStore, summary: dict[str, Any], token: str | None) -> str:
    """Compare-and-swap the summary; ReleaseConflict when another writer changed it since `token`."""
    try:
        new = store.put_if(RELEASE_SUMMARY_KEY, summ.dumps(summary), token)
    except PreconditionFailed as err:
        raise ReleaseConflict(f"the release summary changed under this writer (generation "
                              f"{summary.get('generation')}): {err}") from None
    again, token2 = read_summary(store)  # write-then-validate
    if again is None or again.get("generation") != summary.get("generation") or again.get("owner") != summary.get(
            "owner"):
        raise ReleaseConflict(f"{store.describe()}: the release summary was overwritten right after generation "
                              f"{summary.get('generation')} was written")
    return token2 or new


def _pointer_write(store: ObjectStore, audio_key: str, doc: dict[str, Any] | None, generation: int) -> None:
    """Write (or delete, doc None) a pointer, unless a later generation already wrote it."""
    key = release_pointer_key(audio_key)
    try:
        current, token = store.get_versioned(key)
        held = json.loads(current).get("generation", 0)
    except KeyError:
        current, token, held = None, None, 0
    if held > generation:
        return
    if doc is None:
        if current is not None:
            store.delete(key)
        return
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    if current == data:
        return
    try:
        store.put_if(key, data, token)
    except PreconditionFailed:
        _pointer_write(store, audio_key, doc, generation)  # changed between read and write: look again


def apply_pending(store: ObjectStore, summary: dict[str, Any], token: str | None, work: Path,
                  log: Callable[[str], object]) -> tuple[dict[str, Any], str | None]:
    """Carry out the committed generation's pending work (idempotent), then clear `pending` in the summary."""
    pending = summary.get("pending")
    if not pending:
        return summary, token
    generation = int(summary["generation"])
    try:
        staged = json.loads(store.get_bytes(pending["staged"]))
    except KeyError:
        raise ValueError(f"{store.describe()}: release generation {generation} is committed but its staged "
                         f"changes {pending['staged']} are missing") from None
    hub_upload: list[str] = list(staged["hub"]["upload"])
    hub_delete: list[str] = list(staged["hub"]["delete"])
    for key in staged["delete"]:  # the batch's own files its new build no longer has
        store.delete(key)
    for old_batch, episodes in sorted(staged["drop"].items()):
        changed, deleted = drop_episodes(store, old_batch, set(episodes), work, log)
        hub_upload += changed
        hub_delete += [repo_path(k) for k in deleted]
    batch_id = staged["batch_id"]
    for src, dst in ((staged["index"], index_key(batch_id)), (staged["checksums"], checksums_key(batch_id))):
        try:
            store.put_bytes(dst, store.get_bytes(src))
        except KeyError:
            if not store.exists(dst):
                raise ValueError(f"{store.describe()}: staged {src} of generation {generation} is missing") from None
    for audio_key, doc in sorted(staged["pointers"].items()):
        _pointer_write(store, audio_key, doc, generation)
    done = copy.deepcopy(summary)
    done["pending"] = None
    if staged.get("track_hub"):
        done["hub"] = {"upload": sorted(set(done["hub"]["upload"]) | set(hub_upload)),
                       "delete": sorted((set(done["hub"]["delete"]) | set(hub_delete)) - {repo_path(k) for k in
                                                                                          hub_upload})}
    token = write_summary(store, done, token)
    for key in (pending["staged"], staged["index"], staged["checksums"]):
        store.delete(key)
    log(f"release: generation {generation} applied (batch {batch_id})")
    return done, token


# ---- opening the release: recovery and migration -----------------------------------------------------------------


def _batch_index_keys(store: ObjectStore) -> list[str]:
    """`index/<batch>.parquet` (not the checksums folder, not legacy `.shards.parquet`)."""
    return [o.key for o in iter_objects(store, INDEX_PREFIX)
            if o.key.endswith(".parquet") and "/" not in o.key[len(INDEX_PREFIX):]
            and not o.key.endswith(".shards.parquet")]


def open_release(store: ObjectStore, owner: str, work: Path,
                 log: Callable[[str], object]) -> tuple[dict[str, Any], str | None]:
    """The committed summary, with any pending work of a writer that died applied. A store with batch indexes but
    no summary (published before summaries, or left wedged by duplicate keys) is rebuilt once from its indexes."""
    summary, token = read_summary(store)
    if summary is None:
        legacy = _batch_index_keys(store)
        summary = rebuild_release(store, legacy, work, log) if legacy else summ.empty_summary()
        summary["owner"] = owner
        token = write_summary(store, summary, None)
    return apply_pending(store, summary, token, work, log)


def rebuild_release(store: ObjectStore, index_keys: list[str], work: Path,
                    log: Callable[[str], object]) -> dict[str, Any]:
    """The summary and pointers of a release that has batch indexes but no summary (a one-time migration, reading
    every batch index and manifest). Keys held by two batches are resolved by the rule; the losers' samples are
    removed from their batch, so a release left wedged by a duplicate publishes again."""
    log(f"release: no summary; rebuilding it from {len(index_keys)} batch indexes (once)")
    held: dict[str, tuple[Claim, pl.DataFrame]] = {}
    drops: dict[str, set[str]] = {}
    for key in sorted(index_keys):
        batch_id = key[len(INDEX_PREFIX):-len(".parquet")]
        index = index_from_parquet(store.get_bytes(key))
        try:
            manifest = _optional(read_manifest(store, batch_id), {"version": pl.String(), "modified": pl.Float64()})
            known = {r["episode_id"]: r for r in manifest.iter_rows(named=True)}
        except FileNotFoundError:
            known = {}
        for (episode_id,), rows in index.group_by(["episode_id"], maintain_order=True):
            r = known.get(episode_id)
            claim = Claim(r["audio_key"] if r else f"episode:{episode_id}", str(episode_id),
                          (r["version"] or "") if r else "", float((r["modified"] or 0.0) if r else 0.0),
                          batch_id, True)
            before = held.get(claim.audio_key)
            pointer = None if before is None else {"modified": before[0].modified, "batch_id": before[0].batch_id}
            if pointer is None or _newer(claim, pointer):
                if before is not None:
                    drops.setdefault(before[0].batch_id, set()).add(before[0].episode_id)
                    log(f"release: {claim.audio_key}: episode {before[0].episode_id} of batch {before[0].batch_id} "
                        f"superseded by episode {claim.episode_id} of batch {batch_id}")
                held[claim.audio_key] = (claim, rows.with_columns(pl.lit(claim.audio_key).alias("audio_key")))
            else:
                drops.setdefault(batch_id, set()).add(str(episode_id))
                log(f"release: {claim.audio_key}: episode {episode_id} of batch {batch_id} is older than episode "
                    f"{before[0].episode_id} of batch {before[0].batch_id}: removed")
    for batch_id, episodes in sorted(drops.items()):
        drop_episodes(store, batch_id, episodes, work, log)
    summary = summ.empty_summary()
    for claim, rows in held.values():
        contribution = summ.episode_contributions(rows).get(claim.episode_id, {})
        summ.add(summary["counts"], contribution)
        doc = {"audio_key": claim.audio_key, "episode_id": claim.episode_id, "version": claim.version,
               "modified": claim.modified, "batch_id": claim.batch_id, "generation": 0,
               "contribution": contribution}
        _pointer_write(store, claim.audio_key, doc, 0)
    versions = {c.episode_id: c for c, _ in held.values()}
    upload: list[str] = []
    for key in sorted(index_keys):
        batch_id = key[len(INDEX_PREFIX):-len(".parquet")]
        index = read_index(store, batch_id)
        if index is None:
            continue
        upload += _complete_legacy_batch(store, batch_id, index, versions, work)
        summ.add(summary["counts"]["languages"], {lang: {"shards": n} for lang, n in _tar_counts(
            repo_path(t) for t in index["shard"].unique().to_list()).items()})
    # What the Hub has of a release published before is unknown: every file is offered once (the upload skips
    # those it already has with the same checksum).
    summary["hub"] = {"upload": sorted(set(upload)), "delete": []}
    return summary


def _complete_legacy_batch(store: ObjectStore, batch_id: str, index: pl.DataFrame, versions: dict[str, Claim],
                           work: Path) -> list[str]:
    """Bring a batch published before the release writer up to its layout: the raw object and version of each
    sample in its index, a Parquet twin for each tar, checksums of both in `index/shards/`. Returns its files."""
    sums = _read_checksums(store, batch_id)
    have = set(sums["shard"].to_list())
    twins: dict[str, Path] = {}
    for tar_key in sorted(index["shard"].unique().to_list()):
        pq_key = tar_key[: -len(".tar")] + ".parquet"
        if repo_path(pq_key) in have and store.exists(pq_key):
            continue
        tar_path, pq_path = work / "legacy" / tar_key, work / "legacy" / pq_key
        tar_path.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(tar_key, tar_path)
        shard_to_parquet(tar_path, pq_path)
        store.put_file(pq_path, pq_key)
        twins[repo_path(tar_key)] = tar_path
        twins[repo_path(pq_key)] = pq_path
    if twins or not store.exists(checksums_key(batch_id)):
        sums = pl.concat([sums.filter(~pl.col("shard").is_in(list(twins))), shard_checksums(twins)]).sort("shard")
        store.put_bytes(checksums_key(batch_id), checksums_to_parquet(sums))
    known = {e: c for e, c in versions.items() if not c.audio_key.startswith("episode:")}
    if index["audio_key"].is_null().any() and known:
        filled = index.with_columns(
            pl.col("audio_key").fill_null(pl.col("episode_id").replace_strict(
                {e: c.audio_key for e, c in known.items()}, default=None, return_dtype=pl.String)),
            pl.col("episode_version").fill_null(pl.col("episode_id").replace_strict(
                {e: c.version for e, c in known.items()}, default=None, return_dtype=pl.String)),
        )
        store.put_bytes(index_key(batch_id), index_to_parquet(filled))
    return [_store_key(p) for p in sums["shard"].to_list()] + [index_key(batch_id), checksums_key(batch_id)]


# ---- publishing a batch --------------------------------------------------------------------------------------------


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def publish_batch(
    store: ObjectStore,
    batch_id: str,
    settings: PublishSettings,
    *,
    work_dir: Path,
    upload: Upload | None = None,
    log: Callable[[str], object] = print,
    owner: str | None = None,
) -> PublishOutcome:
    """Put one batch into the release (see the module docstring); `upload` (files, deletions, message) sends the
    changed files to the Hub. Raises ReleaseRefused before writing anything when the batch may not go in."""
    batch = load_batch(store, batch_id, settings)
    if not settings.test_release:
        problem = random_weight_problem(batch.segments, batch.model_docs, batch_id)
        if problem:
            raise ReleaseRefused(problem)
    owner = owner or _owner()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    lock = ReleaseLock(store, owner, ttl_s=settings.lock_ttl_s, wait_s=settings.lock_wait_s,
                       poll_s=settings.lock_poll_s, log=log)
    with lock:
        summary, token = open_release(store, owner, work, log)
        if summ.is_test_release(summary) and not settings.test_release:
            tiny = summary["counts"]["model_kinds"]["tiny"]
            raise ReleaseRefused(f"the release already holds {tiny} segments made by random-weight models (a test "
                                 f"release); publishing batch {batch_id} into it needs the flag too: "
                                 f"{TEST_RELEASE_HINT}, or publish to a new store/repo")

        # ---- decide and validate (reads only) ----
        pointers = {c.audio_key: read_pointer(store, c.audio_key) for c in batch.claims}
        decisions = decide(batch.claims, pointers)
        for d in decisions:
            if d.outcome in ("supersedes", "stale", "withdrawn"):
                log(f"release: {d.describe()}")
        winners = {d.claim.audio_key: d.claim for d in decisions if d.outcome in ("new", "replaces", "supersedes")}
        segments = batch.segments.filter(pl.col("episode_id").is_in([c.episode_id for c in winners.values()]))
        drops: dict[str, set[str]] = {}
        for d in decisions:
            if d.outcome == "supersedes" and d.pointer and d.pointer["batch_id"] != batch_id:
                drops.setdefault(d.pointer["batch_id"], set()).add(d.pointer["episode_id"])
        shard_delta: dict[str, int] = {}
        for old_batch, episodes in drops.items():
            old_index = read_index(store, old_batch)
            if old_index is not None:
                for lang, n in _tar_counts(repo_path(s) for s in emptied_shards(old_index, episodes)).items():
                    shard_delta[lang] = shard_delta.get(lang, 0) - n

        # ---- the batch's own files (nothing refers to them before the commit) ----
        built = build_batch(store, batch, segments, winners, settings, work / "batch", lock.heartbeat)
        lock.heartbeat()
        for lang, n in _tar_counts(built.checksums["shard"].to_list()).items():
            shard_delta[lang] = shard_delta.get(lang, 0) + n
        for lang, n in _tar_counts(built.previous_files["shard"].to_list()).items():
            shard_delta[lang] = shard_delta.get(lang, 0) - n

        # ---- the next summary and the staged changes ----
        urls = {r["episode_id"]: r["source_url"] for r in segments.filter(pl.col("source_url").is_not_null())
                .unique("episode_id", keep="first").iter_rows(named=True)}
        contributions = summ.episode_contributions(built.index, urls)
        new = copy.deepcopy(summary)
        generation = int(summary["generation"]) + 1
        new_pointers: dict[str, dict[str, Any] | None] = {}
        for d in decisions:
            if d.outcome in ("replaces", "supersedes", "withdrawn") and d.pointer:
                summ.add(new["counts"], d.pointer.get("contribution", {}), -1)
            if d.outcome == "withdrawn":
                new_pointers[d.claim.audio_key] = None
            if d.claim.audio_key in winners:
                c = d.claim
                contribution = contributions.get(c.episode_id, {})
                summ.add(new["counts"], contribution)
                new_pointers[c.audio_key] = {
                    "audio_key": c.audio_key, "episode_id": c.episode_id, "version": c.version,
                    "modified": c.modified, "batch_id": batch_id, "generation": generation,
                    "contribution": contribution}
        summ.add(new["counts"]["languages"], {lang: {"shards": n} for lang, n in shard_delta.items()})
        new["model_docs"] = {**summary.get("model_docs", {}), **batch.model_docs}
        summ.prune_docs(new)
        broken = summ.negative_counts(new["counts"])
        if broken:
            raise ValueError(f"release: publishing batch {batch_id} would leave negative counts {broken[:5]}: the "
                             "release state is inconsistent (see docs/release.md, rebuilding the summary)")
        pending_key = release_pending_key(generation)
        staged_index, staged_sums = pending_key[:-5] + ".index.parquet", pending_key[:-5] + ".checksums.parquet"
        store.put_bytes(staged_index, index_to_parquet(built.index))
        store.put_bytes(staged_sums, checksums_to_parquet(built.checksums))
        batch_files = sorted(built.local) + [index_key(batch_id), checksums_key(batch_id)]
        staged = {
            "generation": generation, "batch_id": batch_id, "owner": owner, "index": staged_index,
            "checksums": staged_sums, "pointers": new_pointers,
            "drop": {b: sorted(e) for b, e in sorted(drops.items())}, "delete": built.stale_files,
            "track_hub": upload is not None,
            "hub": {"upload": batch_files, "delete": [repo_path(k) for k in built.stale_files]},
        }
        store.put_bytes(pending_key, json.dumps(staged, sort_keys=True).encode())
        new.update(generation=generation, owner=owner, pending={"staged": pending_key},
                   updated={"batch_id": batch_id, "at": round(time.time(), 3)},
                   card={"repo_id": settings.repo_id, "license": settings.license,
                         "filters": dataclasses.asdict(settings.filters)})

        # ---- commit, then apply ----
        lock.heartbeat(force=True)
        token = write_summary(store, new, token)
        log(f"release: generation {generation} committed (batch {batch_id}: {built.index.height} samples)")
        summary, token = apply_pending(store, new, token, work, log)

        # ---- the card, from the summary ----
        card, figure = write_card(store, summary)
        report = None
        if upload is not None:
            lock.heartbeat(force=True)
            report, summary, token = sync_hub(store, summary, token, built, card, figure, upload, batch_id, work,
                                              lock)
        outcome = PublishOutcome(
            batch_id=batch_id, generation=generation, files=built.checksums, samples=built.index.height,
            hours=round(float(built.index["duration"].sum() or 0.0) / 3600, 4), dropped_by_filters=batch.dropped,
            decisions=decisions, rewritten_batches=sorted(drops),
            release_samples=int(summary["counts"].get("totals", {}).get("segments", 0)),
            test_release=summ.is_test_release(summary), upload=report, lock_waited_s=lock.waited_s)
    shutil.rmtree(work, ignore_errors=True)
    return outcome


def render_release_card(summary: dict[str, Any]) -> tuple[str, bytes]:
    """The card of a summary, with the repo, licence and filters of the publish that last committed it."""
    card = summary.get("card") or {}
    filters = PublishFilters(**card["filters"]) if card.get("filters") is not None else None
    return render_card(summary, repo_id=card.get("repo_id") or PublishSettings().repo_id,
                       license=card.get("license") or PublishSettings().license, filters=filters,
                       index_path="index/*.parquet")


def write_card(store: ObjectStore, summary: dict[str, Any]) -> tuple[str, bytes]:
    readme, figure = render_release_card(summary)
    store.put_bytes(CARD_KEY, readme.encode())
    store.put_bytes(FIGURE_KEY, figure)
    return readme, figure


def sync_hub(store: ObjectStore, summary: dict[str, Any], token: str | None, built: BuiltBatch, card: str,
             figure: bytes, upload: Upload, batch_id: str, work: Path,
             lock: ReleaseLock) -> tuple[UploadReport, dict[str, Any], str | None]:
    """Upload every file the release changed that the Hub does not have yet (this batch's, the rewritten ones, and
    those of earlier publishes whose upload failed), the card last; then remove the emptied shards."""
    todo = list(summary["hub"]["upload"])
    deletes = list(summary["hub"]["delete"])
    files: dict[str, Path] = {}
    fetched = work / "hub"
    for key in todo:
        path = built.local.get(key)
        if path is None:
            path = fetched / key
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                store.get_file(key, path)
            except KeyError:
                continue  # deleted since (an emptied shard of a later rewrite): its deletion is listed
        files[repo_path(key)] = path
    for name, data in (("README.md", card.encode()), ("assets/distributions.png", figure)):
        path = work / "card" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[name] = path  # last: the card never describes files the repo lacks

    def ordered(item: tuple[str, Path]) -> tuple[int, str]:
        name = item[0]
        return (0 if name.startswith("data/") else 1 if name.startswith("index/") else 2, name)

    report = upload(dict(sorted(files.items(), key=ordered)), deletes, f"Emilia Forge: batch {batch_id}",
                    lock.heartbeat)
    lock.heartbeat(force=True)
    done = copy.deepcopy(summary)
    done["hub"] = {"upload": sorted(set(summary["hub"]["upload"]) - set(todo)),
                   "delete": sorted(set(summary["hub"]["delete"]) - set(deletes))}
    token = write_summary(store, done, token)
    return report, done, token


# ---- checking a release (tests, operators) -------------------------------------------------------------------------


def verify_release(store: ObjectStore) -> list[str]:
    """Problems with the release in the store, reading all of it (not for publishing: for tests and operators).

    Checks that no sample key is in two batch indexes and no raw object has samples of two episodes; that every
    indexed sample is in its tar and Parquet file and nothing else is; that the checksums match the files; that the
    summary's counts equal those recomputed from the indexes; that each raw object's pointer names the episode the
    indexes hold; and that the card in the store is the one the summary renders."""
    problems: list[str] = []
    summary, _ = read_summary(store)
    if summary is None:
        return ["no release summary"]
    if summary.get("pending"):
        problems.append(f"generation {summary['generation']} is committed but not applied")
    frames = []
    for key in _batch_index_keys(store):
        batch_id = key[len(INDEX_PREFIX):-len(".parquet")]
        index = index_from_parquet(store.get_bytes(key))
        frames.append(index)
        sums = {r["shard"]: r for r in _read_checksums(store, batch_id).iter_rows(named=True)}
        used = set()
        for tar_key in sorted(index["shard"].unique().to_list()):
            keys = set(index.filter(pl.col("shard") == tar_key)["key"].to_list())
            for file_key in (tar_key, tar_key[: -len(".tar")] + ".parquet"):
                used.add(repo_path(file_key))
                try:
                    data = store.get_bytes(file_key)
                except KeyError:
                    problems.append(f"{file_key}: listed by index {key} but missing")
                    continue
                row = sums.get(repo_path(file_key))
                if row is None or row["sha256"] != hashlib.sha256(data).hexdigest() or row["bytes"] != len(data):
                    problems.append(f"{file_key}: the checksums of batch {batch_id} do not match the file")
                held = _keys_in(file_key, data)
                if held != keys:
                    problems.append(f"{file_key}: holds {sorted(held ^ keys)[:3]}, unlike its index")
        for shard in sorted(set(sums) - used):
            problems.append(f"the checksums of batch {batch_id} list {shard}, which its index does not use")
    release = pl.concat(frames) if frames else pl.DataFrame()
    if release.height:
        dup = release.filter(pl.col("key").is_duplicated())["key"].unique().to_list()
        if dup:
            problems.append(f"{len(dup)} sample keys in two batch indexes, e.g. {sorted(dup)[:3]}")
        two = (release.filter(pl.col("audio_key").is_not_null()).group_by("audio_key")
               .agg(pl.col("episode_id").n_unique().alias("n")).filter(pl.col("n") > 1))
        if two.height:
            problems.append(f"{two.height} raw objects with samples of two episodes, e.g. "
                            f"{sorted(two['audio_key'].to_list())[:3]}")
        for audio_key in sorted(release["audio_key"].drop_nulls().unique().to_list()):
            p = read_pointer(store, audio_key)
            held = set(release.filter(pl.col("audio_key") == audio_key)["episode_id"].to_list())
            if p is None or {p["episode_id"]} != held:
                problems.append(f"the pointer of {audio_key} names {p and p['episode_id']}; the indexes hold {held}")
    recomputed = summ.summary_from_index(release)["counts"] if release.height else summ.empty_counts()
    counts = summ.add(summ.empty_counts(), summary["counts"])
    recomputed = summ.add(summ.empty_counts(), recomputed)
    for c in (counts, recomputed):  # an index does not carry the sources' URLs
        for source in c.get("sources", {}).values():
            source.pop("urls", None)
    for part in sorted(set(counts) | set(recomputed)):
        if counts.get(part) != recomputed.get(part):
            problems.append(f"the summary's {part} differ from the indexes'")
    try:
        card = store.get_bytes(CARD_KEY).decode()
        if card != render_release_card(summary)[0]:
            problems.append("the card in the store is not the one the summary renders")
    except KeyError:
        problems.append("no card in the store")
    return problems


def _keys_in(file_key: str, data: bytes) -> set[str]:
    """Sample keys of a tar or a Parquet file of the release."""
    import io

    if file_key.endswith(".parquet"):
        return set(pl.read_parquet(io.BytesIO(data), columns=["id"])["id"].to_list())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.split(".", 1)[0] for m in tar.getmembers()}
