"""`dagster dev -w workspace.yaml` on 127.0.0.1 for end-to-end tests: webserver, daemon and both code locations.

Started in its own process session and stopped with SIGINT to the whole session (as Ctrl-C would), SIGKILL after
30 s; afterwards no process that carries the test's DAGSTER_HOME may be left (run workers included). Start-up waits
end when the log has been quiet for `no_progress_s`, not on a total: each location imports torch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import requests
from dagster_shared.utils import find_free_port

from tests.k8s_fixture import wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOCATIONS = {"emilia_forge", "emilia_gpu"}
_LOCATIONS_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries { name
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


@dataclass
class DevServer:
    url: str
    proc: subprocess.Popen
    log: Path

    def check_alive(self) -> None:
        """Raises if `dagster dev` has exited (a wait on its runs then fails at once instead of idling out)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {self.proc.returncode}; see {self.log}")


@contextmanager
def dagster_dev(env: dict[str, str], log: Path, no_progress_s: float = 120.0) -> Iterator[DevServer]:
    """Yields the server once both code locations are loaded. `env` must hold DAGSTER_HOME."""
    port = find_free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "dagster"), "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = DevServer(f"http://127.0.0.1:{port}", proc, log)
    try:
        def loaded() -> bool:
            server.check_alive()
            return locations_loaded(server.url)

        # each location imports torch on start-up: the clock restarts whenever the server's output grows
        wait_until(loaded, idle_s=no_progress_s, progress=lambda: log.stat().st_size, poll_s=0.5)
        assert proc.pid in processes_with_env("DAGSTER_HOME", env["DAGSTER_HOME"]), "the leftover check sees it"
        yield server
    finally:
        stop_session(proc)
        left = processes_with_env("DAGSTER_HOME", env["DAGSTER_HOME"])
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running after dagster dev stopped: {left}"


def locations_loaded(url: str) -> bool:
    try:
        reply = requests.post(f"{url}/graphql", json={"query": _LOCATIONS_QUERY}, timeout=10).json()
    except (requests.RequestException, ValueError):
        return False
    entries = (reply.get("data") or {}).get("workspaceOrError", {}).get("locationEntries") or []
    errors = [e for e in entries if (e["locationOrLoadError"] or {}).get("__typename") == "PythonError"]
    if errors:
        raise RuntimeError(f"code location failed to load: {errors}")
    return {e["name"] for e in entries
            if (e["locationOrLoadError"] or {}).get("__typename") == "RepositoryLocation"} == LOCATIONS


def stop_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    with suppress(subprocess.TimeoutExpired):
        proc.wait(30)
    deadline = time.monotonic() + 30  # dagster dev may return before its children (webserver, daemon, code servers)
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # a zombie leader still counts for killpg: alive only if some member is not a zombie
    return bool(_members(pgid))


def _members(pgid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes whose environment has name=value (a run worker outside the session would show here)."""
    needle = f"{name}={value}".encode()
    found = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit() or int(proc_dir.name) == os.getpid():
            continue
        try:
            environ = (proc_dir / "environ").read_bytes().split(b"\0")
            state = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != "Z":
            found.append(int(proc_dir.name))
    return found
