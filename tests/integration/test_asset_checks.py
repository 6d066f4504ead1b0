"""The batch's asset checks through Dagster, on a batch the pipe really processed: each passes on the sound output
and fails when that output is corrupted on purpose; a failing blocking check keeps the batch out of the release in
the same run and in the next one (the publish sensor and hf_shards' gate).

One batch (monologue, 3 segments, plus an empty file that fails its probe) is processed once for the module; each
test corrupts a copy of its store and re-materializes. processed_segments then resumes every episode from its
completion marker (no worker starts) and rebuilds the catalogue from the corrupted all_segments.json, as a re-run
of a batch does; the checks evaluate in that step.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from emilia_assets.assets.process import processed_segments
from emilia_assets.assets.publish import hf_shards
from emilia_assets.partitions import episode_batches
from resources.object_store import ObjectStoreResource
from resources.pipe import EmiliaPipeResource
from tests.integration.helpers import batch_from_sensor, materialize_batch, seed_samples

BLOCKING = {"failed_episodes_under_threshold": True, "segment_ids_unique": True, "durations_within_rules": False,
            "dnsmos_not_collapsed": True, "shards_match_catalogue": True, "no_random_weight_release": True}


def verdicts(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def step_failure(result, step: str) -> str:
    return next(str(e.event_specific_data.error.message) for e in result.all_events
                if e.event_type_value == "STEP_FAILURE" and e.step_key == step)


def materialized(result, asset: str) -> bool:
    return bool(result.asset_materializations_for_node(asset))


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> dict:
    """The batch probed, processed and published in one run (fast pipe: no model stage, so no DNSMOS scores)."""
    root = tmp_path_factory.mktemp("checks") / "store"
    seed_samples(root, ["monologue"])
    (root / "raw_audio/en/show/empty.mp3").write_bytes(b"")
    store = ObjectStoreResource(local_root=str(root))
    with dg.instance_for_test() as instance:
        (batch,) = batch_from_sensor(instance, store)
        result = materialize_batch(instance, store, batch, raise_on_error=False)
    return {"root": root, "batch": batch, "result": result}


@pytest.fixture
def batch(processed, tmp_path) -> Iterator[dict]:
    """A copy of the processed batch's store and a fresh instance that knows the partition."""
    root = tmp_path / "store"
    shutil.copytree(processed["root"], root)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(episode_batches.name, [processed["batch"]])
        yield {"root": root, "id": processed["batch"], "store": ObjectStoreResource(local_root=str(root)),
               "instance": instance}


def corrupt(root: Path, edit: Callable[[dict], None]) -> None:
    """Edit the processed episode's all_segments.json in place."""
    (path,) = root.glob("processed/*/monologue-*/all_segments.json")
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def generation(root: Path) -> int:
    return json.loads((root / "release/summary.json").read_text())["generation"]


def test_a_sound_batch_passes_every_check_in_the_run_that_makes_it(processed):
    result = processed["result"]
    assert result.success
    got = verdicts(result)
    assert {n: (e.passed, e.blocking) for n, e in got.items()} == {n: (True, b) for n, b in BLOCKING.items()}
    assert {e.partition for e in got.values()} == {processed["batch"]}  # each batch its own verdicts
    failed = got["failed_episodes_under_threshold"].metadata
    assert failed["failures_by_reason"].value == {"empty file (0 bytes)": 1}
    assert failed["failed_fraction"].value == 0.5 and failed["max_failure_fraction"].value == 0.5
    assert got["durations_within_rules"].metadata["max_s"].value == 30.0
    assert "not scored" in got["dnsmos_not_collapsed"].description  # the fast pipe runs no DNSMOS
    assert got["shards_match_catalogue"].metadata["in_shards"].value == 3


def test_the_blocking_flags_reach_the_asset_graph_and_every_job_runs_the_checks():
    from emilia_assets.definitions import defs as cpu_defs
    from emilia_assets.gpu_definitions import defs as gpu_defs

    for defs, job_name, asset in ((gpu_defs(), "emilia_job", processed_segments), (cpu_defs(), "publish_job",
                                                                                    hf_shards)):
        graph = defs.resolve_asset_graph()
        keys = [k for k in graph.asset_check_keys if k.asset_key == asset.key]
        assert {k.name: graph.get_check_spec(k).blocking for k in keys} == {
            k.name: BLOCKING[k.name] for k in keys} and len(keys) in (2, 4)
        for job in (defs.resolve_job_def(job_name), defs.resolve_implicit_global_asset_job_def()):
            assert job.asset_check_selection is None or set(keys) <= set(job.asset_check_selection), job.name
            assert all(job.asset_layer.get_op_output_name(k) for k in keys), job.name


def test_a_duplicated_segment_id_fails_and_keeps_the_batch_out_of_the_release_until_fixed(batch):
    from emilia_assets.definitions import defs
    from sensors.publish import publish_sensor

    root, instance = batch["root"], batch["instance"]
    before = generation(root)

    def duplicate(doc: dict) -> None:
        doc["segments"][1]["id"] = doc["segments"][0]["id"]

    corrupt(root, duplicate)
    result = materialize_batch(instance, batch["store"], batch["id"], selection=[processed_segments, hf_shards],
                               raise_on_error=False)
    check = verdicts(result)["segment_ids_unique"]
    assert not check.passed and check.blocking
    assert check.metadata["duplicates_in_catalogue"].value == 1
    assert check.metadata["duplicates_across_episodes"].value == 1
    assert "segment_ids_unique" in step_failure(result, "processed_segments")
    # same run: the materialization is recorded with its verdict, the downstream asset does not run
    assert materialized(result, "processed_segments") and not materialized(result, "hf_shards")
    assert generation(root) == before

    # next runs: the publish sensor passes the batch over, and hf_shards launched by hand refuses it
    tick = publish_sensor(dg.build_sensor_context(instance=instance, cursor=None, definitions=defs()))
    assert tick.run_requests == []
    alone = materialize_batch(instance, batch["store"], batch["id"], selection=[hf_shards], raise_on_error=False)
    refusal = step_failure(alone, "hf_shards")
    assert "not published" in refusal and "segment_ids_unique" in refusal
    assert generation(root) == before

    # fixed and processed again: the new materialization's verdicts let it through
    corrupt(root, lambda doc: doc["segments"][1].update(id=doc["segments"][1]["wav"].removesuffix(".mp3")))
    fixed = materialize_batch(instance, batch["store"], batch["id"], selection=[processed_segments])
    assert verdicts(fixed)["segment_ids_unique"].passed
    tick = publish_sensor(dg.build_sensor_context(instance=instance, cursor=tick.cursor, definitions=defs()))
    assert [r.partition_key for r in tick.run_requests] == [batch["id"]]


def test_a_40_s_segment_fails_durations_within_rules_as_a_warning(batch):
    root, instance = batch["root"], batch["instance"]

    def stretch(doc: dict) -> None:
        seg = doc["segments"][0]
        seg["end"], seg["duration"] = seg["start"] + 40.0, 40.0

    corrupt(root, stretch)
    result = materialize_batch(instance, batch["store"], batch["id"], selection=[processed_segments, hf_shards],
                               raise_on_error=False)
    check = verdicts(result)["durations_within_rules"]
    assert not check.passed and not check.blocking and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["outside"].value == 1 and "40.0 s" in check.description
    assert result.success and materialized(result, "hf_shards"), "a warning does not hold the batch back"
    # the bounds are the pipe's configured rules: with max_segment_s=45 the same segment is within them
    wider = materialize_batch(instance, batch["store"], batch["id"], selection=[processed_segments],
                              pipe=EmiliaPipeResource(stages=[], max_segment_s=45.0))
    assert verdicts(wider)["durations_within_rules"].passed


def test_equal_dnsmos_scores_fail_dnsmos_not_collapsed_in_the_gpu_job(batch, monkeypatch):
    from emilia_assets.gpu_definitions import defs

    def flatten(doc: dict) -> None:
        for seg in doc["segments"]:
            seg["dnsmos"] = {"sig": 3.2, "bak": 3.9, "ovrl": 3.0}

    corrupt(batch["root"], flatten)
    monkeypatch.setenv("EMILIA_LOCAL_STORE", str(batch["root"]))
    monkeypatch.setenv("EMILIA_STAGES", "")
    monkeypatch.delenv("R2_BUCKET", raising=False)
    job = defs().resolve_job_def("emilia_job")  # the job the GPU sensor launches, with its own selection
    result = job.execute_in_process(instance=batch["instance"], partition_key=batch["id"], raise_on_error=False)
    check = verdicts(result)["dnsmos_not_collapsed"]
    assert not check.passed and check.blocking
    assert "std 0.0 < 0.005" in check.description and check.metadata["ovrl"].value["distinct"] == 1
    assert "dnsmos_not_collapsed" in step_failure(result, "processed_segments")
    assert set(verdicts(result)) == {n for n in BLOCKING if n not in ("shards_match_catalogue",
                                                                        "no_random_weight_release")}


def test_exceeding_the_failure_fraction_fails_failed_episodes_under_threshold(batch):
    result = materialize_batch(batch["instance"], batch["store"], batch["id"], selection=[processed_segments],
                               max_failure_fraction=0.25, raise_on_error=False)
    check = verdicts(result)["failed_episodes_under_threshold"]
    assert not check.passed and check.blocking
    assert "1/2 episodes failed" in check.description and "max_failure_fraction=0.25" in check.description
    assert check.metadata["failures_by_reason"].value == {"empty file (0 bytes)": 1}
    assert "1/2 episodes" in step_failure(result, "processed_segments")
    assert not materialized(result, "processed_segments")


def test_a_sample_missing_from_its_shard_fails_shards_match_catalogue_in_the_publish_job(batch, monkeypatch):
    """Packing that loses a sample (here: the last of each shard) is caught by the check, not by the writer."""
    import emilia_publish.release as release
    from emilia_assets.definitions import defs

    real = release.write_shard
    monkeypatch.setattr(release, "write_shard", lambda path, samples: real(path, iter(list(samples)[:-1])))
    monkeypatch.setenv("EMILIA_LOCAL_STORE", str(batch["root"]))
    monkeypatch.delenv("R2_BUCKET", raising=False)
    monkeypatch.delenv("HF_REPO_ID", raising=False)
    monkeypatch.delenv("HF_TEST_RELEASE", raising=False)
    job = defs().resolve_job_def("publish_job")  # the job the publish sensor launches
    result = job.execute_in_process(instance=batch["instance"], partition_key=batch["id"], raise_on_error=False)
    check = verdicts(result)["shards_match_catalogue"]
    assert not check.passed and check.blocking
    assert check.metadata["in_shards"].value == 2 and len(check.metadata["missing_from_shards"].value) == 1
    assert "shards_match_catalogue" in step_failure(result, "hf_shards")
    assert verdicts(result)["no_random_weight_release"].passed


def test_random_weight_provenance_fails_no_random_weight_release_unless_a_test_release(batch, monkeypatch):
    import emilia_publish.release as release

    root, instance, store = batch["root"], batch["instance"], batch["store"]
    corrupt(root, lambda doc: doc["episode"]["provenance"]["model_set"].update(kind="tiny"))
    assert materialize_batch(instance, store, batch["id"], selection=[processed_segments]).success
    # the writer's own guard refuses such a batch before writing (test_batch_chain); with that guard gone (a
    # regression), the check still catches what was published
    monkeypatch.setattr(release, "random_weight_problem", lambda *args: None)
    slipped = materialize_batch(instance, store, batch["id"], selection=[hf_shards], raise_on_error=False)
    check = verdicts(slipped)["no_random_weight_release"]
    assert not check.passed and check.blocking and check.metadata["random_weight_samples"].value == 3
    assert "not a test release" in check.description
    assert "no_random_weight_release" in step_failure(slipped, "hf_shards")
    # an explicit test release may hold it
    flagged = materialize_batch(instance, store, batch["id"], selection=[hf_shards], test_release=True)
    check = verdicts(flagged)["no_random_weight_release"]
    assert check.passed and "explicit test release" in check.description
