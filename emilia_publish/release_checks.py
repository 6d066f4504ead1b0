"""Checks of one published batch, computed from the batch's own files in the store (Dagster-free; `hf_shards`
reports them as asset checks right after it publishes).

They read the batch's catalogue, status table and manifest (`release.load_batch`), one release pointer per episode
of the batch, its index and checksums, and its tars (member names only): never another batch's files, so checking
costs the same for the 3rd batch as for the 300th.

- `shards_match_catalogue`: the samples in the batch's tars are exactly its catalogued segments that the release
  holds (the episodes whose pointer names this batch, after the publish filters), each as a `<key>.mp3` +
  `<key>.json` pair, and the batch's index lists the same keys.
- `no_random_weight_release`: nothing the batch published was made by the random-weight model set (`models tiny`,
  kind `tiny` in the provenance), unless the release is an explicit test release (`test_release` /
  `HF_TEST_RELEASE=1`). The writer refuses such batches before writing (`release.random_weight_problem`); this
  check looks at what was actually published, so a regression of that guard cannot pass unseen.
"""

from __future__ import annotations

import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from emilia_pipe.batch_checks import EXAMPLES, CheckOutcome
from emilia_publish.release import PublishSettings, _read_checksums, load_batch, read_index, read_pointer
from emilia_store import ObjectStore, iter_objects, read_parquet
from emilia_store.layout import batch_segments_key, shard_prefix, store_key_of

SHARDS_MATCH_CATALOGUE = "shards_match_catalogue"
NO_RANDOM_WEIGHT_RELEASE = "no_random_weight_release"
RELEASE_CHECKS = (SHARDS_MATCH_CATALOGUE, NO_RANDOM_WEIGHT_RELEASE)
RANDOM_WEIGHT_KIND = "tiny"  # emilia_pipe.models.tiny: ModelSet(kind="tiny")


def published_episodes(store: ObjectStore, batch_id: str, settings: PublishSettings) -> set[str]:
    """Episodes of the batch that the release holds from it: those whose pointer names this batch and episode."""
    out = set()
    for claim in load_batch(store, batch_id, settings).claims:
        pointer = read_pointer(store, claim.audio_key)
        if pointer and pointer.get("batch_id") == batch_id and pointer.get("episode_id") == claim.episode_id:
            out.add(claim.episode_id)
    return out


def _tar_keys(store: ObjectStore, batch_id: str, languages: set[str], work: Path) -> tuple[list[str], dict[str, Any]]:
    """The batch's tars (from its checksums and from the store under its shard prefixes) and their members."""
    tars = {store_key_of(p) for p in _read_checksums(store, batch_id)["shard"].to_list() if p.endswith(".tar")}
    languages = languages | {t.split("/")[1] for t in tars if t.count("/") >= 2}
    for language in sorted(languages):
        tars |= {o.key for o in iter_objects(store, shard_prefix(language, batch_id)) if o.key.endswith(".tar")}
    members: dict[str, Any] = {"tars": sorted(tars), "keys": [], "unpaired": [], "missing_tars": []}
    for n, key in enumerate(sorted(tars)):
        local = work / f"{n:05d}.tar"
        try:
            store.get_file(key, local)
        except KeyError:
            members["missing_tars"].append(key)
            continue
        with tarfile.open(local) as tar:
            names = [m.name for m in tar]  # headers only: the data is skipped, not read
        local.unlink()
        kinds: dict[str, set[str]] = {}
        for name in names:
            stem, _, ext = name.partition(".")
            kinds.setdefault(stem, set()).add(ext)
        members["keys"] += list(kinds)
        members["unpaired"] += [f"{key}: {stem} has {sorted(ext)}" for stem, ext in sorted(kinds.items())
                                if ext != {"mp3", "json"}]
    return sorted(set(members["keys"])), members | {"duplicates": _dups(members["keys"])}


def _dups(keys: list[str]) -> list[str]:
    return sorted(k for k, n in Counter(keys).items() if n > 1)


def shards_match_catalogue(store: ObjectStore, batch_id: str, settings: PublishSettings,
                           work_dir: Path | None = None) -> CheckOutcome:
    """Passes when the batch's tars hold exactly the catalogued segments the release holds from the batch (after
    the publish filters), every sample with its `.mp3` and `.json`, no key in two tars, and the index agrees."""
    batch = load_batch(store, batch_id, settings)
    episodes = published_episodes(store, batch_id, settings)
    expected = set(batch.segments.filter(pl.col("episode_id").is_in(list(episodes)))["id"].to_list())
    languages = set(batch.segments["language"].drop_nulls().unique().to_list())
    with tempfile.TemporaryDirectory(prefix="shard-check-", dir=work_dir) as tmp:
        in_shards, found = _tar_keys(store, batch_id, languages, Path(tmp))
    index = read_index(store, batch_id)
    indexed = set(index["key"].to_list()) if index is not None else set()
    shards = set(in_shards)
    missing = sorted(expected - shards)
    extra = sorted(shards - expected)
    index_diff = sorted(indexed ^ shards)
    problems = []
    if missing:
        problems.append(f"{len(missing)} catalogued segments missing from the shards (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} samples in the shards that the catalogue does not hold for this batch "
                        f"(e.g. {extra[0]})")
    if found["unpaired"]:
        problems.append(f"{len(found['unpaired'])} samples without both .mp3 and .json (e.g. {found['unpaired'][0]})")
    if found["duplicates"]:
        problems.append(f"{len(found['duplicates'])} keys in two tars (e.g. {found['duplicates'][0]})")
    if found["missing_tars"]:
        problems.append(f"{len(found['missing_tars'])} tars listed but missing (e.g. {found['missing_tars'][0]})")
    if index_diff:
        problems.append(f"the index and the shards differ by {len(index_diff)} keys (e.g. {index_diff[0]})")
    text = "; ".join(problems) or (f"{len(shards)} samples in {len(found['tars'])} tars: exactly the "
                                   f"{len(expected)} catalogued segments of {len(episodes)} published episodes")
    return CheckOutcome(SHARDS_MATCH_CATALOGUE, not problems, text, {
        "catalogued": len(expected), "in_shards": len(shards), "indexed": len(indexed), "tars": len(found["tars"]),
        "published_episodes": len(episodes), "dropped_by_filters": batch.dropped,
        "missing_from_shards": missing[:EXAMPLES], "not_in_catalogue": extra[:EXAMPLES],
        "unpaired": found["unpaired"][:EXAMPLES], "in_two_tars": found["duplicates"][:EXAMPLES],
        "missing_tars": found["missing_tars"][:EXAMPLES], "index_differs": index_diff[:EXAMPLES],
    })


def no_random_weight_release(store: ObjectStore, batch_id: str, settings: PublishSettings) -> CheckOutcome:
    """Passes when no sample the batch published comes from a random-weight model set, or the release is an
    explicit test release. A sample's kind is its catalogue row's `model_kind` (the provenance the pipeline
    recorded), else the index's: random-weight in either counts."""
    index = read_index(store, batch_id)
    if index is None:
        return CheckOutcome(NO_RANDOM_WEIGHT_RELEASE, True, f"batch {batch_id} has no index: nothing published",
                            {"samples": 0, "test_release": settings.test_release})
    try:
        catalogue = read_parquet(store, batch_segments_key(settings.processed_prefix, batch_id))
    except KeyError:
        catalogue = pl.DataFrame(schema={"id": pl.String, "model_kind": pl.String, "model_set": pl.String})
    recorded = {r["id"]: (r.get("model_kind"), r.get("model_set")) for r in
                catalogue.select([c for c in ("id", "model_kind", "model_set") if c in catalogue.columns])
                .iter_rows(named=True)}
    kinds: Counter[str] = Counter()
    random_sets: set[str] = set()
    random_keys: list[str] = []
    for r in index.iter_rows(named=True):
        cat_kind, cat_set = recorded.get(r["key"], (None, None))
        kind = RANDOM_WEIGHT_KIND if RANDOM_WEIGHT_KIND in (cat_kind, r.get("model_kind")) else (
            cat_kind or r.get("model_kind") or "unrecorded")
        kinds[kind] += 1
        if kind == RANDOM_WEIGHT_KIND:
            random_keys.append(r["key"])
            random_sets.add(str(cat_set or r.get("model_set") or "?"))
    n_random = len(random_keys)
    passed = n_random == 0 or settings.test_release
    if n_random == 0:
        text = f"none of {index.height} published samples was made by random-weight models"
    elif passed:
        text = (f"{n_random} of {index.height} published samples were made by random-weight models "
                f"(model set {', '.join(sorted(random_sets))}): allowed, this is an explicit test release")
    else:
        text = (f"{n_random} of {index.height} published samples were made by random-weight models (model set "
                f"{', '.join(sorted(random_sets))}, kind {RANDOM_WEIGHT_KIND}) in a release that is not a test "
                "release (test_release / HF_TEST_RELEASE unset)")
    return CheckOutcome(NO_RANDOM_WEIGHT_RELEASE, passed, text, {
        "samples": index.height, "random_weight_samples": n_random, "test_release": settings.test_release,
        "model_kinds": dict(sorted(kinds.items())), "random_weight_model_sets": sorted(random_sets),
        "examples": sorted(random_keys)[:EXAMPLES],
    })


def check_published_batch(store: ObjectStore, batch_id: str, settings: PublishSettings,
                          work_dir: Path | None = None) -> list[CheckOutcome]:
    """Every check of the published batch, in `RELEASE_CHECKS` order."""
    return [shards_match_catalogue(store, batch_id, settings, work_dir),
            no_random_weight_release(store, batch_id, settings)]
