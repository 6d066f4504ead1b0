"""Loading the code location does not import the ML stack; only a run that builds the Emilia pipe does.

Code servers, the sensor daemon's ticks, schedules and the UI load `emilia_assets.definitions` over and over (the
daemon restarts code servers, several live at once); with torch, faster-whisper and onnxruntime in that import chain
each load cost ~0.9 GB and seconds. Each check runs in a fresh interpreter, so nothing an earlier test imported in
this process can hide (or fake) a leak, and reports which of the heavy modules ended up in `sys.modules`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Top-level names of the libraries only a processing run needs (matplotlib: only a publish run draws the card).
HEAVY = ("torch", "torchaudio", "faster_whisper", "ctranslate2", "onnxruntime", "pyannote", "transformers",
         "silero_vad", "lightning", "speechbrain", "matplotlib")

REPORT = textwrap.dedent(
    """
    import json, sys
    heavy = {heavy!r}
    print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))))
    """
).format(heavy=HEAVY)


def heavy_modules_after(script: str, tmp_path: Path) -> list[str]:
    """Runs `script` in a fresh interpreter at the repo root; returns the heavy top-level modules it left loaded."""
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", textwrap.dedent(script) + REPORT], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("R2_BUCKET", "EMILIA_STAGES", "DAGSTER_HOME")}
    env["EMILIA_LOCAL_STORE"] = str(tmp_path / "store")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def test_loading_the_definitions_imports_no_ml_stack(tmp_path: Path) -> None:
    # What a code server does: import the module, build the Definitions, resolve every job for the UI's snapshot.
    leaked = heavy_modules_after(
        """
        import emilia_assets.definitions as d
        repo = d.defs().get_repository_def()
        assert len(repo.get_all_jobs()) >= 4 and len(repo.sensor_defs) >= 3 and len(repo.schedule_defs) >= 2
        """,
        tmp_path,
    )
    assert leaked == []


def test_sensor_and_schedule_ticks_import_no_ml_stack(tmp_path: Path) -> None:
    # One real tick of every sensor and schedule, on a real (temporary) instance and a local store with work in it.
    leaked = heavy_modules_after(
        f"""
        import datetime, os
        from pathlib import Path
        import dagster as dg
        from emilia_assets.definitions import defs
        from sensors.publish import publish_sensor
        from sensors.raw_audio import raw_audio_sensor
        from sensors.report import dataset_report_sensor
        from sensors.sources import refresh_podcasts_schedule, refresh_youtube_schedule, sources_sensor
        from resources.batching import BatchingResource
        from resources.object_store import ObjectStoreResource

        root = Path({str(tmp_path / "store")!r})
        for key, body in [("raw_audio/en/src/ep1.mp3", b"x" * 100), ("raw_audio/de/src/ep2.mp3", b"y" * 100),
                          ("sources/podcast_feeds.txt", b"https://feeds.example.invalid/a.xml\\n")]:
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_bytes(body)
        store = ObjectStoreResource(local_root=str(root))
        d = defs()
        with dg.instance_for_test() as instance:
            raw = raw_audio_sensor(dg.build_sensor_context(
                instance=instance, definitions=d, resources={{"store": store, "batching": BatchingResource()}}))
            assert len(raw.run_requests) == 1, raw.run_requests
            src = sources_sensor(dg.build_sensor_context(instance=instance, definitions=d,
                                                         resources={{"store": store}}))
            assert len(src.run_requests) == 1, src.run_requests
            pub = publish_sensor(dg.build_sensor_context(instance=instance, definitions=d))
            assert pub.run_requests == []
            report = dataset_report_sensor(dg.build_sensor_context(instance=instance, definitions=d))
            assert isinstance(report, dg.SkipReason), report
            when = datetime.datetime(2025, 1, 1, 3, tzinfo=datetime.timezone.utc)
            for schedule in (refresh_podcasts_schedule, refresh_youtube_schedule):
                schedule(dg.build_schedule_context(instance=instance, scheduled_execution_time=when))
        """,
        tmp_path,
    )
    assert leaked == []


def test_the_pipe_still_loads_its_runtime_when_a_run_asks(tmp_path: Path) -> None:
    # Guards the guard: the same probe does see torch & co. once the pipe's config is built, as a processing run does.
    leaked = heavy_modules_after(
        """
        from resources.pipe import EmiliaPipeResource
        config = EmiliaPipeResource(stages=[], device="cpu").pipe_config()
        assert config.stages == ["standardize", "vad", "export"], config.stages
        """,
        tmp_path,
    )
    assert {"torch", "faster_whisper", "ctranslate2", "onnxruntime"} <= set(leaked)
