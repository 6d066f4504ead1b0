"""`emilia-forge process` and a batch run are the same runner: the same file gives the same id and the same result."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import soundfile as sf

from resources.object_store import ObjectStoreResource
from resources.pipe import EmiliaPipeResource
from tests.integration.helpers import batch_from_sensor, materialize_batch, status_table

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emilia_pipe", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_cli_processes_files_into_the_processed_layout_and_reports_bad_ones(tmp_path, tiny_models):
    good = tmp_path / "in/long_silence.mp3"
    good.parent.mkdir()
    shutil.copyfile(ROOT / "samples/long_silence.mp3", good)
    bad = tmp_path / "in/bad.mp3"
    bad.write_text("not audio")
    proc = cli("process", str(good), str(bad), "--out", str(tmp_path / "out"), "--language", "en",
               "--models", str(tiny_models), "--root", str(tmp_path / "in"))
    assert proc.returncode == 1  # one file failed
    assert f"FAILED {bad}: " in proc.stderr and "not audio" in proc.stderr
    (line,) = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    ep_dir = Path(line["dir"])
    assert ep_dir.parent == tmp_path / "out/en"
    doc = json.loads((ep_dir / "all_segments.json").read_text())
    assert len(doc["segments"]) == line["segments"] >= 2
    assert sorted(p.name for p in ep_dir.glob("*.mp3")) == sorted(s["wav"] for s in doc["segments"])
    assert all(s["text"] and s["dnsmos"]["ovrl"] > 0 for s in doc["segments"])
    (table,) = (tmp_path / "out/_batches").glob("*.segments.parquet")
    assert pl.read_parquet(table)["episode_id"].unique().to_list() == [line["episode_id"]]
    assert not list((tmp_path / "out").glob(".out-*"))


def test_a_file_outside_the_root_is_refused_with_the_reason(tmp_path):
    (tmp_path / "a.mp3").write_bytes(b"x")
    proc = cli("process", str(tmp_path / "a.mp3"), "--out", str(tmp_path / "out"), "--root", str(tmp_path / "r"))
    assert proc.returncode == 2 and f"FAILED {tmp_path / 'a.mp3'}: outside --root" in proc.stderr


def test_the_cli_and_a_batch_run_agree_on_ids_failures_and_results(tmp_path, tiny_models):
    store_root = tmp_path / "store"
    show = store_root / "raw_audio/en/show"
    show.mkdir(parents=True)
    shutil.copyfile(ROOT / "samples/monologue.mp3", show / "monologue.mp3")
    (show / "truncated.mp3").write_bytes((ROOT / "samples/music_bed.mp3").read_bytes()[:600])
    (show / "empty.mp3").write_bytes(b"")
    dropped = store_root / "raw_audio/dropped"  # no language in its key: `und` unless ASR is told otherwise
    dropped.mkdir()
    sf.write(dropped / "silence.wav", np.zeros(24000 * 8, np.float32), 24000)
    files = sorted(str(p) for p in store_root.rglob("*") if p.is_file())

    # the CLI, from another working directory, with the store's folder as the root
    proc = cli("process", *files, "--out", str(tmp_path / "cli"), "--root", str(store_root), "--language", "en",
               "--stages", "asr", "--models", str(tiny_models), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    by_file = {json.loads(x)["file"]: json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")}
    failed = {x.split(": ", 1)[0][len("FAILED "):]: x.split(": ", 1)[1] for x in proc.stderr.splitlines()
              if x.startswith("FAILED ")}

    # the platform: sensor -> batch -> probe -> runner, on a store rooted at the same folder
    store = ObjectStoreResource(local_root=str(store_root))
    from dagster import instance_for_test

    with instance_for_test() as instance:
        (batch,) = batch_from_sensor(instance, store)
        # the CLI's settings: the same defaults (beam 5) come from the same builder
        pipe = EmiliaPipeResource(models_dir=str(tiny_models), stages=["asr"], asr_language="en")
        materialize_batch(instance, store, batch, pipe=pipe, selection=None, max_failure_fraction=1.0,
                          test_release=True)  # tiny (random-weight) Whisper: a test release
    status = {r["audio_key"]: r for r in status_table(store_root, batch).iter_rows(named=True)}

    assert set(failed) == {str(show / "truncated.mp3"), str(show / "empty.mp3")}
    for file, reason in failed.items():
        row = status[Path(file).relative_to(store_root).as_posix()]
        assert row["status"] == "failed" and row["error"].endswith(reason)
    assert failed[str(show / "empty.mp3")] == "empty file (0 bytes)"
    assert "truncated" in failed[str(show / "truncated.mp3")]
    for file, line in by_file.items():
        row = status[Path(file).relative_to(store_root).as_posix()]
        assert line["episode_id"] == row["episode_id"] and row["status"] == "done"
        assert Path(line["dir"]).parent.name == row["language"] == "en"  # forced: even the silence is `en`
        cli_doc = json.loads((Path(line["dir"]) / "all_segments.json").read_text())
        batch_doc = json.loads((store_root / f"processed/en/{row['episode_id']}/all_segments.json").read_text())
        assert [(s["id"], s["start"], s["end"], s["text"]) for s in cli_doc["segments"]] == [
            (s["id"], s["start"], s["end"], s["text"]) for s in batch_doc["segments"]]
    silence = by_file[str(dropped / "silence.wav")]
    assert silence["segments"] == 0


def test_run_batch_processes_a_manifest_in_an_s3_bucket_from_the_environment(tmp_path, s3_env, s3_store):
    """`emilia-forge run-batch` is the asset without Dagster: the same store variables, the same outputs."""
    from emilia_pipe.batching import ScanCursor, scan_tick

    for stem in ("monologue", "two_voices"):
        s3_store.put_file(ROOT / f"samples/{stem}.mp3", f"raw_audio/en/show/{stem}.mp3")
    (batch,) = scan_tick(s3_store, ScanCursor(), "raw_audio/").batches
    env = {**os.environ, **s3_env, "EMILIA_STAGES": "", "EMILIA_WORK_DIR": str(tmp_path / "work")}
    env.pop("EMILIA_MODELS_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "emilia_pipe", "run-batch", batch.batch_id, "--stages", ""],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert (summary["episodes"], summary["done"], summary["failed"]) == (2, 2, 0) and summary["segments"] > 0
    assert "progress: 2/2 episodes" in proc.stderr
    status = pl.read_parquet(io.BytesIO(s3_store.get_bytes(f"processed/_batches/{batch.batch_id}.parquet")))
    assert status["status"].to_list() == ["done", "done"]
    for eid in status["episode_id"]:
        assert s3_store.exists(f"processed/_episodes/{eid}.json")
    assert summary["checks"] == {"failed_episodes_under_threshold": True, "segment_ids_unique": True,
                                 "durations_within_rules": True, "dnsmos_not_collapsed": True}

    # The batch's checks run as in the asset: a segment listed twice fails segment_ids_unique, which blocks.
    marker = json.loads(s3_store.get_bytes(f"processed/_episodes/{status['episode_id'][0]}.json"))
    doc = json.loads(s3_store.get_bytes(marker["all_segments"]))
    doc["segments"].append(doc["segments"][0])
    s3_store.put_bytes(marker["all_segments"], json.dumps(doc).encode())
    again = subprocess.run([sys.executable, "-m", "emilia_pipe", "run-batch", batch.batch_id, "--stages", ""],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    resumed = json.loads(again.stdout.splitlines()[-1])
    assert resumed["resumed"] == 2 and resumed["checks"]["segment_ids_unique"] is False
    assert again.returncode == 1 and "check segment_ids_unique failed" in again.stderr, again.stderr[-3000:]


def test_a_bad_number_in_the_environment_is_refused_naming_the_variable(tmp_path):
    (tmp_path / "a.mp3").write_bytes((ROOT / "samples/long_silence.mp3").read_bytes())
    for name, value in [("WORKERS_PER_GPU", "two"), ("EMILIA_CPU_WORKERS", "0"), ("MAX_GPUS", "-1")]:
        proc = subprocess.run([sys.executable, "-m", "emilia_pipe", "process", str(tmp_path / "a.mp3"), "--out",
                               str(tmp_path / "out"), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env={**os.environ, name: value})
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"emilia-forge: error: {name}={value!r}: expected an integer >= " in proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
