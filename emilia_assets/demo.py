"""`make demo`: bundled sample episodes through the real Dagster machinery, on the embedded default.

Seeds `raw_audio/` of the local store with `samples/*.mp3`, turns on the chain's three sensors, runs
`dagster-daemon` (sensor ticks -> batch partitions -> a probe run per batch -> its GPU run in the emilia_gpu location
-> its publish run), waits for every run to finish and prints
where the shards are. Reused by the integration tests with an S3 store instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
from dagster import DagsterInstance, DagsterRunStatus

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
TERMINAL = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def seed_local(store_root: Path, language: str = "en", source: str = "samples") -> list[Path]:
    """Copy the sample episodes into raw_audio/<language>/<source>/ with metadata sidecars."""
    target = store_root / "raw_audio" / language / source
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for mp3 in sorted(SAMPLES.glob("*.mp3")):
        dst = target / mp3.name
        shutil.copyfile(mp3, dst)
        sidecar = {"title": mp3.stem.replace("_", " "), "source": source, "license": "generated (espeak-ng)"}
        (target / f"{mp3.stem}.json").write_text(json.dumps(sidecar))
        out.append(dst)
    return out


# sensor -> its code location
SENSORS = {"raw_audio_sensor": "emilia_forge", "gpu_batch_sensor": "emilia_gpu", "publish_sensor": "emilia_forge"}
# The chain has three sensor hops; ticks every 5 s keep the demo short (production: 30 s).
DEMO_SENSOR_INTERVALS = {"GPU_BATCH_SENSOR_INTERVAL_S": "5", "PUBLISH_SENSOR_INTERVAL_S": "5"}


def set_sensors(running: bool) -> None:
    """Start (or stop) every sensor of SENSORS with one load of the workspace: `dagster sensor start` loads every
    code location of workspace.yaml on each call, which costs tens of seconds per sensor on a small machine."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    with (
        DagsterInstance.get() as instance,
        WorkspaceProcessContext(instance, WorkspaceFileTarget([str(ROOT / "workspace.yaml")])) as context,
    ):
        request = context.create_request_context()
        for name, location in SENSORS.items():
            (repo,) = request.get_code_location(location).get_repositories().values()
            sensor = repo.get_sensor(name)
            if running:
                instance.start_sensor(sensor)
            else:
                instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)


def run_daemon_until(
    expect: dict[str, int], timeout_s: float = 900, env: dict[str, str] | None = None, log=print
) -> list[dg.DagsterRun]:
    """Start the sensors and the daemon; return once `expect[job]` runs of each job have finished."""
    env = {**DEMO_SENSOR_INTERVALS, **os.environ, **(env or {})}
    set_sensors(running=True)
    daemon = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + timeout_s
        seen: dict[str, DagsterRunStatus] = {}
        done: list[dg.DagsterRun] = []
        with DagsterInstance.get() as instance:
            while time.monotonic() < deadline:
                runs = [r for job in expect for r in instance.get_runs(dg.RunsFilter(job_name=job))]
                for run in runs:
                    if seen.get(run.run_id) != run.status:
                        seen[run.run_id] = run.status
                        log(f"{run.job_name} run {run.run_id[:8]} batch {run.tags.get('dagster/partition')}: "
                            f"{run.status.value}")
                done = [r for r in runs if r.status in TERMINAL]
                if all(sum(r.job_name == job for r in done) >= n for job, n in expect.items()):
                    return done
                if daemon.poll() is not None:
                    raise RuntimeError(f"dagster-daemon exited with {daemon.returncode}")
                time.sleep(1)
        raise TimeoutError(f"runs finished: {len(done)}, expected {expect}, in {timeout_s:.0f} s")
    finally:
        os.killpg(daemon.pid, signal.SIGINT)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        set_sensors(running=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    if "DAGSTER_HOME" not in os.environ:
        sys.exit("set DAGSTER_HOME (make demo does)")
    store_root = Path(os.environ.get("EMILIA_LOCAL_STORE", "data")).resolve()
    seeded = seed_local(store_root)
    print(f"seeded {len(seeded)} sample episodes into {store_root / 'raw_audio'}")
    with DagsterInstance.get() as instance:
        before = {job: len(instance.get_runs(dg.RunsFilter(job_name=job)))
                  for job in ("probe_job", "emilia_job", "publish_job")}
    runs = run_daemon_until({job: n + 1 for job, n in before.items()}, args.timeout)
    failed = [r for r in runs if r.status != DagsterRunStatus.SUCCESS]
    shards = sorted(store_root.glob("shards/*/*.tar"))
    print(f"\n{len(runs)} run(s) finished, {len(failed)} failed")
    print(f"processed: {store_root / 'processed'}")
    for shard in shards:
        print(f"shard: {shard} ({shard.stat().st_size / 1e6:.2f} MB)")
    return 1 if failed or not shards else 0


if __name__ == "__main__":
    sys.exit(main())
