"""`make demo`: bundled sample episodes through the real Dagster machinery, on the embedded default.

Seeds `raw_audio/` of the local store with `samples/*.mp3`, turns on the chain's three sensors, runs
`dagster-daemon` (sensor ticks -> batch partitions -> a probe run per batch -> its GPU run in the emilia_gpu location
-> its publish run), waits for every run to finish and prints where the shards are. The wait ends on lack of progress
(`--timeout` seconds in which no run appeared, changed status or logged), not on a total, so a slow machine only
makes the demo slower. Reused by the integration tests with an S3 store instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
from dagster import DagsterInstance, DagsterRunStatus

from emilia_assets.run_progress import DEFAULT_NO_PROGRESS_S, NoProgressError, wait_for_runs

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


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
    expect: dict[str, int], no_progress_s: float = DEFAULT_NO_PROGRESS_S, env: dict[str, str] | None = None, log=print
) -> list[dg.DagsterRun]:
    """Start the sensors and the daemon; return once `expect[job]` runs of each job have finished.

    Fails (`NoProgressError`, naming the pending runs) only when no run appeared, changed status or logged for
    `no_progress_s` seconds: a slow machine makes the chain slower, not wrong.
    """
    env = {**DEMO_SENSOR_INTERVALS, **os.environ, **(env or {})}
    set_sensors(running=True)
    daemon = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )

    def daemon_alive() -> None:
        if daemon.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited with {daemon.returncode}")

    try:
        with DagsterInstance.get() as instance:
            return wait_for_runs(instance, expect, no_progress_s, log=log, check=daemon_alive)
    finally:
        os.killpg(daemon.pid, signal.SIGINT)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        set_sensors(running=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=DEFAULT_NO_PROGRESS_S,
                        help="seconds without run progress (a run appearing, changing status or logging) before "
                             "giving up; not a limit on the total time (default %(default)s)")
    args = parser.parse_args()
    if "DAGSTER_HOME" not in os.environ:
        sys.exit("set DAGSTER_HOME (make demo does)")
    store_root = Path(os.environ.get("EMILIA_LOCAL_STORE", "data")).resolve()
    seeded = seed_local(store_root)
    print(f"seeded {len(seeded)} sample episodes into {store_root / 'raw_audio'}")
    with DagsterInstance.get() as instance:
        before = {job: len(instance.get_runs(dg.RunsFilter(job_name=job)))
                  for job in ("probe_job", "emilia_job", "publish_job")}
    try:
        runs = run_daemon_until({job: n + 1 for job, n in before.items()}, args.timeout)
    except NoProgressError as err:
        print(f"\ndemo stopped: {err}", file=sys.stderr)
        return 1
    failed = [r for r in runs if r.status != DagsterRunStatus.SUCCESS]
    shards = sorted(store_root.glob("shards/*/*.tar"))
    print(f"\n{len(runs)} run(s) finished, {len(failed)} failed")
    print(f"processed: {store_root / 'processed'}")
    for shard in shards:
        print(f"shard: {shard} ({shard.stat().st_size / 1e6:.2f} MB)")
    return 1 if failed or not shards else 0


if __name__ == "__main__":
    sys.exit(main())
