"""Kubernetes without a cluster: a recording API server on 127.0.0.1, its kubeconfig, and test instances built
from deploy/dagster.yaml.

The API server answers what K8sRunLauncher and the daemon's run monitoring ask of it: POST of a Job (recorded and
echoed back as created), GET of a recorded Job (reported as running, since no kubelet will ever run it, or as failed
once the test says its pod was lost) and 404 with a Kubernetes `Status` body for everything else. The launcher talks
to it through the real kubernetes client, so the recorded body is exactly what a cluster would receive.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

_JOBS = re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs(?:/(?P<name>[^/?]+))?(?:/status)?/?(?:\?.*)?$")


class RecordingKubeApi:
    """`jobs` holds every Job body POSTed, in order, as the JSON the client sent."""

    def __init__(self) -> None:
        self.jobs: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.failed: set[str] = set()  # Jobs whose pod the test has ended (see `fail_job`)
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _send(self, code: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                api._record("POST", self.path)
                match = _JOBS.match(self.path)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if not match or match["name"]:
                    return self._send(404, _status(404, f"no route for POST {self.path}"))
                with api._lock:
                    api.jobs.append(body)
                created = copy.deepcopy(body)
                created.setdefault("metadata", {})["namespace"] = match["ns"]
                created["metadata"]["uid"] = f"uid-{len(api.jobs)}"
                self._send(201, created)

            def do_GET(self) -> None:  # noqa: N802
                api._record("GET", self.path)
                match = _JOBS.match(self.path)
                job = api.job_named(match["name"]) if match and match["name"] else None
                if job is None:
                    return self._send(404, _status(404, f"not found: {self.path}"))
                status = ({"failed": 1, "startTime": "2026-01-01T00:00:00Z"} if match["name"] in api.failed else
                          {"active": 1, "startTime": "2026-01-01T00:00:00Z"})
                self._send(200, {**job, "status": status})

            def do_DELETE(self) -> None:  # noqa: N802
                api._record("DELETE", self.path)
                self._send(200, _status(200, "deleted"))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def job_named(self, name: str) -> dict | None:
        with self._lock:
            return next((j for j in self.jobs if j.get("metadata", {}).get("name") == name), None)

    def fail_job(self, name: str) -> None:
        """From now on the Job is reported with no active pod and one failed: a pod lost with its node."""
        with self._lock:
            self.failed.add(name)

    def job_for_run(self, run_id: str) -> dict | None:
        with self._lock:
            return next((j for j in self.jobs if j["metadata"].get("labels", {}).get("dagster/run-id") == run_id),
                        None)

    def __enter__(self) -> RecordingKubeApi:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "recording",
            "clusters": [{"name": "recording", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": "recording", "context": {"cluster": "recording", "user": "test"}}],
        }))
        return path


def _status(code: int, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure" if code >= 400 else "Success",
            "message": message, "code": code}


def deploy_instance_config() -> dict:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


def sqlite_storage(config: dict, base_dir: Path) -> dict:
    """deploy/dagster.yaml with its Postgres storage replaced by SQLite under base_dir (everything else as deployed)."""
    out = {k: v for k, v in config.items() if k not in ("run_storage", "event_log_storage", "schedule_storage")}
    out["storage"] = {"sqlite": {"base_dir": str(base_dir)}}
    return out


def wait_until(predicate, idle_s: float = 60.0, progress=lambda: None, poll_s: float = 0.5):
    """Poll until predicate() is truthy; give up only after `idle_s` seconds without `progress()` changing."""
    last, changed = progress(), time.monotonic()
    while True:
        result = predicate()
        if result:
            return result
        now = progress()
        if now != last:
            last, changed = now, time.monotonic()
        elif time.monotonic() - changed > idle_s:
            raise TimeoutError(f"no progress for {idle_s:.0f} s (last state: {last!r})")
        time.sleep(poll_s)


def grpc_ready(client) -> bool:
    """Whether a `dagster api grpc` server answers a ping yet (a DagsterGrpcClient)."""
    try:
        client.ping("ready")
        return True
    except Exception:
        return False
