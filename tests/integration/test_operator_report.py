"""What an operator sees: the per-batch figures on processed_segments and the dataset report over two batches.

Real batches on the local store and a real Dagster instance: one with DNSMOS on the tiny models' files (with two
broken files; diarization, the slow stage on CPU, is left out), one through the cheap stages. Every figure is
checked against the episodes' `all_segments.json` and the status table, never against numbers written here.
"""

from __future__ import annotations

import base64
import io
import json
import re

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from emilia_assets.assets.process import processed_segments
from emilia_assets.assets.report import dataset_report
from emilia_assets.definitions import defs
from emilia_pipe.batch_report import failure_reason
from resources.batching import BatchingResource
from resources.object_store import ObjectStoreResource
from resources.pipe import EmiliaPipeResource
from sensors.raw_audio import raw_audio_sensor
from sensors.report import dataset_report_sensor
from tests.integration.helpers import SAMPLES, materialize_batch, metadata, seed_samples, status_table


def new_batch(instance: dg.DagsterInstance, store: ObjectStoreResource, cursor: str | None) -> tuple[str, str]:
    """One raw-audio sensor tick after `cursor`: (the batch it made, the new cursor)."""
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs(),
                                  resources={"store": store, "batching": BatchingResource()})
    result = raw_audio_sensor(ctx)
    ((req,),) = [result.dynamic_partitions_requests]
    instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    (batch,) = req.partition_keys
    return batch, result.cursor


def episode_docs(root, batch: str) -> list[dict]:
    status = status_table(root, batch)
    docs = []
    for row in status.filter(status["status"] == "done").iter_rows(named=True):
        docs.append(json.loads((root / "processed" / row["language"] / row["episode_id"] / "all_segments.json")
                               .read_text()))
    return docs


def expected_from_docs(docs: list[dict]) -> dict:
    segs = [s for d in docs for s in d["segments"]]
    stage_s: dict[str, float] = {}
    for d in docs:
        for k, v in d["episode"]["stage_seconds"].items():
            stage_s[k] = stage_s.get(k, 0.0) + v
    return {
        "segments": len(segs),
        "hours_out": sum(s["duration"] for s in segs) / 3600,
        "speakers": sum(len({s["speaker"] for s in d["segments"]}) for d in docs),
        "ovrl": [s["dnsmos"]["ovrl"] for s in segs if s.get("dnsmos")],
        "stage_s": stage_s,
    }


def test_batch_figures_and_the_dataset_report_over_two_batches(tmp_path, tiny_models):
    root = tmp_path / "store"
    store = ObjectStoreResource(local_root=str(root))
    seed_samples(root, ["two_voices"])
    (root / "raw_audio/en/show/empty.mp3").write_bytes(b"")
    (root / "raw_audio/en/show/truncated.mp3").write_bytes((SAMPLES / "music_bed.mp3").read_bytes()[:600])
    with dg.instance_for_test() as instance:
        batch_a, cursor = new_batch(instance, store, None)
        dnsmos_pipe = EmiliaPipeResource(models_dir=str(tiny_models), stages=["dnsmos"])
        result = materialize_batch(instance, store, batch_a, pipe=dnsmos_pipe, max_failure_fraction=0.9,
                                   selection=[processed_segments])
        meta_a = metadata(result, "processed_segments")
        logs = [e.user_message for e in instance.all_logs(result.run_id)]

        seed_samples(root, ["monologue"], language="de", source="talk")
        batch_b, _ = new_batch(instance, store, cursor)
        result_b = materialize_batch(instance, store, batch_b, selection=[processed_segments])
        meta_b = metadata(result_b, "processed_segments")

        # --- batch A against its episodes' all_segments.json ---
        docs = episode_docs(root, batch_a)
        exp = expected_from_docs(docs)
        assert exp["segments"] > 0 and exp["speakers"] > 0 and len(exp["ovrl"]) == exp["segments"]
        assert (meta_a["episodes"], meta_a["done"], meta_a["failed"]) == (3, 1, 2)
        assert meta_a["segments"] == exp["segments"]
        assert meta_a["speakers"] == exp["speakers"]
        assert meta_a["hours_out"] == pytest.approx(exp["hours_out"], abs=1e-4)
        assert meta_a["hours_in"] == pytest.approx(sum(d["episode"]["duration"] for d in docs) / 3600, abs=1e-4)
        assert meta_a["dnsmos_ovrl_mean"] == pytest.approx(np.mean(exp["ovrl"]), abs=1e-4)
        for p in (10, 50, 90):
            assert meta_a[f"dnsmos_ovrl_p{p}"] == pytest.approx(np.percentile(exp["ovrl"], p), abs=1e-4)
        assert {"dnsmos_sig_p50", "dnsmos_bak_p90"} <= set(meta_a)
        assert set(exp["stage_s"]) == {"standardize", "vad", "dnsmos", "export"}
        for stage, seconds in exp["stage_s"].items():
            assert meta_a[f"stage_s_{stage}"] == pytest.approx(seconds, abs=1e-2)
        assert meta_a["failures_by_reason"] == {"empty file": 1, "truncated": 1}
        assert meta_a["language_mix"]["en"]["segments"] == exp["segments"]
        summary_md = meta_a["summary"].md_str if hasattr(meta_a["summary"], "md_str") else str(meta_a["summary"])
        assert "| empty file | 1 |" in summary_md and "| dnsmos |" in summary_md and "| cpu |" in summary_md
        assert meta_a["audio_hours_per_wall_hour"] > 0
        on_disk = json.loads((root / "processed/_batches" / f"{batch_a}.summary.json").read_text())
        assert on_disk["segments"] == exp["segments"] and on_disk["stage_devices"]["dnsmos"] == "cpu"
        # progress in the run log, as a long batch shows it
        assert any(re.match(r"progress: 3/3 episodes, .* audio h per wall h", m or "") for m in logs), logs

        # --- batch B (cheap stages, another language); then one batch without a summary (an older batch) ---
        docs_b = episode_docs(root, batch_b)
        assert meta_b["segments"] == sum(len(d["segments"]) for d in docs_b) > 0
        assert "dnsmos_ovrl_mean" not in meta_b and set(meta_b["language_mix"]) == {"de"}
        (root / "processed/_batches" / f"{batch_b}.summary.json").unlink()

        # --- the sensor asks for one report for both batches, then nothing until another batch ---
        tick = dataset_report_sensor(dg.build_sensor_context(instance=instance, definitions=defs()))
        assert [r.run_key for r in tick.run_requests] == [f"dataset-report-{_latest(instance)}"]
        again = dataset_report_sensor(dg.build_sensor_context(instance=instance, cursor=tick.cursor,
                                                              definitions=defs()))
        assert isinstance(again, dg.SkipReason)

        report = dg.materialize([dataset_report], instance=instance, resources={"store": store})
        meta = metadata(report, "dataset_report")

    # totals are the sums over the two batches
    assert meta["batches"] == 2
    for key in ("segments", "speakers", "episodes", "failed"):
        assert meta[key] == meta_a[key] + meta_b[key], key
    assert meta["hours_out"] == pytest.approx(meta_a["hours_out"] + meta_b["hours_out"], abs=1e-4)
    assert meta["hours_in"] == pytest.approx(meta_a["hours_in"] + meta_b["hours_in"], abs=1e-4)
    assert meta["failures_by_reason"] == meta_a["failures_by_reason"]
    data = json.loads((root / "reports/dataset/report.json").read_text())
    assert data["languages"]["en"]["segments"] == meta_a["segments"]
    assert data["languages"]["de"]["speakers"] == meta_b["speakers"]
    assert [b["rebuilt"] for b in data["per_batch"]] == [False, True]  # B's summary was removed: rebuilt
    assert data["dnsmos"]["ovrl"]["n"] == len(exp["ovrl"])
    assert data["dnsmos"]["ovrl"]["p50"] == pytest.approx(np.percentile(exp["ovrl"], 50), abs=0.011)
    # the PNGs are in the store, decode as PNG, and the UI's markdown carries the same images
    plots = meta["plots"].md_str if hasattr(meta["plots"], "md_str") else str(meta["plots"])
    inline = dict(re.findall(r"!\[(\w+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", plots))
    assert set(inline) == {"hours_by_language", "hours_by_batch", "dnsmos", "failures"}
    for name, b64 in inline.items():
        png = (root / "reports/dataset" / f"{name}.png").read_bytes()
        assert base64.b64decode(b64) == png and len(png) < 60_000, name
        with Image.open(io.BytesIO(png)) as img:
            assert img.format == "PNG" and img.size[0] >= 300
        assert meta[f"png_{name}"] == f"reports/dataset/{name}.png"
    report_md = meta["report"].md_str if hasattr(meta["report"], "md_str") else str(meta["report"])
    assert "| truncated | 1 |" in report_md and f"{batch_b} (no summary)" in report_md


def _latest(instance: dg.DagsterInstance) -> int:
    records = instance.fetch_materializations(dg.AssetKey("processed_segments"), limit=1, ascending=False).records
    return records[0].storage_id


@pytest.mark.parametrize(("error", "key", "reason"), [
    ("raw_audio/a.mp3: empty file (0 bytes)", "raw_audio/a.mp3", "empty file"),
    ("raw_audio/a.mp3: truncated: the header declares 60.0 s but audio ends near 3.1 s", "raw_audio/a.mp3",
     "truncated"),
    ("raw_audio/a.mp3: not a readable audio file: an HTML page (Invalid data)", "raw_audio/a.mp3",
     "not a readable audio file"),
    ("x:1.mp3: upload failed: OSError: disk full", "x:1.mp3", "upload failed"),
    ("raw_audio/a.mp3: worker killed by SIGKILL while processing it, 2 attempts", "raw_audio/a.mp3",
     "worker killed by SIGKILL"),
    ("raw_audio/a.mp3: RuntimeError: boom", "raw_audio/a.mp3", "RuntimeError"),
    (None, "raw_audio/a.mp3", "unknown"),
])
def test_failure_reasons_drop_the_key_and_the_detail(error, key, reason):
    assert failure_reason(error, key) == reason
