"""What a re-run of a batch will redo: the report behind `emilia-forge backfill --failed-only`.

No new mechanism is needed to re-run only the failed episodes of a batch: the batch runner (`emilia_pipe.runner`)
already skips every episode whose completion marker `processed/_episodes/<episode_id>.json` exists and redoes every
other one from scratch (leftovers of a half-finished upload removed first). So a re-run of a batch is a failed-only
re-run, and the failed-only backfill is a backfill of just the batches that have something to redo. This module
says which batches those are and which episodes each will redo, reading what the runner reads:

- the batch's status table (`processed/_batches/<batch>.parquet`), the cheap filter: a batch whose table lists every
  episode of its manifest, none failed, has nothing to redo and costs one read;
- for the others, each episode's completion marker (one HEAD each, as the runner's own resume pass does), so the
  report is exactly what the runner will do, also for episodes a killed run never got to;
- the probe table (`manifests/probes/<batch>.parquet`): an episode whose input was found unreadable there is not
  redone (the runner trusts the probe). That version of the object stays unreadable; a replaced object is a new
  version, which the raw-audio sensor batches again as a new episode (`emilia_pipe.keys.episode_id_for_key`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from emilia_pipe.batching import read_manifest
from emilia_store import ObjectStore, read_parquet
from emilia_store.layout import batch_status_key, episode_done_key, probes_key


@dataclass(frozen=True)
class EpisodeRedo:
    episode_id: str
    audio_key: str
    reason: str  # the recorded error, or why there is no record


@dataclass(frozen=True)
class BatchRedo:
    """One batch: the episodes a re-run redoes, those it leaves failed (unreadable input) and those it keeps."""

    batch_id: str
    episodes: int
    processed: bool  # a run has written the batch's status table
    redo: list[EpisodeRedo] = field(default_factory=list)
    unreadable: list[EpisodeRedo] = field(default_factory=list)
    complete: int = 0

    def describe(self) -> str:
        if not self.processed:
            return (f"{self.batch_id}: never processed (no status table); not a failed-only re-run, backfill it "
                    f"without --failed-only")
        head = (f"{self.batch_id}: {len(self.redo)} of {self.episodes} episodes to redo, {self.complete} complete "
                f"(left untouched)")
        lines = [head] + [f"  redo {e.episode_id} ({e.audio_key}): {e.reason}" for e in self.redo]
        lines += [f"  not redone, unreadable input {e.episode_id} ({e.audio_key}): {e.reason}"
                  for e in self.unreadable]
        return "\n".join(lines)


def _optional_table(store: ObjectStore, key: str):
    try:
        return read_parquet(store, key)
    except KeyError:
        return None


def plan_redo(store: ObjectStore, processed_prefix: str, batch_id: str, threads: int = 16) -> BatchRedo:
    """What a re-run of `batch_id` will redo. Raises FileNotFoundError (naming the key) for a batch without a
    manifest."""
    manifest = read_manifest(store, batch_id)
    status = _optional_table(store, batch_status_key(processed_prefix, batch_id))
    if status is None:
        return BatchRedo(batch_id, manifest.height, processed=False)
    rows = {r["episode_id"]: r for r in status.iter_rows(named=True)}
    episodes = list(manifest.iter_rows(named=True))
    if all(rows.get(e["episode_id"], {}).get("status") in ("done", "resumed") for e in episodes):
        return BatchRedo(batch_id, len(episodes), processed=True, complete=len(episodes))
    probes = _optional_table(store, probes_key(batch_id))
    unreadable = {} if probes is None else {
        r["episode_id"]: r["reason"] for r in probes.iter_rows(named=True) if not r["ok"]}
    with ThreadPoolExecutor(threads, thread_name_prefix="emilia-redo") as ex:
        complete = list(ex.map(lambda e: store.exists(episode_done_key(processed_prefix, e["episode_id"])),
                               episodes))
    redo, kept_failed = [], []
    for ep, done in zip(episodes, complete, strict=True):
        if done:
            continue
        row = rows.get(ep["episode_id"])
        if ep["episode_id"] in unreadable:
            kept_failed.append(EpisodeRedo(ep["episode_id"], ep["audio_key"], unreadable[ep["episode_id"]]))
        elif row is None:
            redo.append(EpisodeRedo(ep["episode_id"], ep["audio_key"], "unfinished (no record: its run ended first)"))
        elif row["status"] == "failed":
            redo.append(EpisodeRedo(ep["episode_id"], ep["audio_key"], row["error"] or "failed"))
        else:
            redo.append(EpisodeRedo(ep["episode_id"], ep["audio_key"],
                                    f"recorded {row['status']} but its completion marker is missing"))
    return BatchRedo(batch_id, len(episodes), processed=True, redo=redo, unreadable=kept_failed,
                     complete=sum(complete))
