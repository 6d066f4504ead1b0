"""A small Kubernetes API server on 127.0.0.1 that keeps pods and Jobs in memory and records every request.

It answers what the real `kubernetes` client sends for the calls the GPU courtesy sensor and the K8sRunLauncher
make: create a Job (which creates its pod from the template, as the Job controller would), list pods (namespaced or
cluster-wide, with label and field selectors and `limit`/`continue` paging), delete a Job or a pod (the pod is
marked with a deletionTimestamp, as while it shuts down). The test plays the scheduler and the kubelet with
`place`, `refuse`, `finish_deletions` and `add_pod`.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

GPU_FULL = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are available: 4 No " \
           "preemption victims found for incoming pod."


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, str]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _label_match(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k) != v.lstrip("="):
                return False
        elif term not in labels:
            return False
    return True


def _field_match(pod: dict, selector: str) -> bool:
    fields = {"status.phase": pod["status"].get("phase"), "metadata.name": pod["metadata"]["name"],
              "metadata.namespace": pod["metadata"]["namespace"], "spec.nodeName": pod["spec"].get("nodeName", "")}
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if fields[k] == v:
                return False
        else:
            k, v = term.split("=", 1)
            if fields[k] != v.lstrip("="):
                return False
    return True


class KubeCluster:
    def __init__(self, page_size: int = 2) -> None:
        self.pods: dict[tuple[str, str], dict] = {}
        self.jobs: dict[tuple[str, str], dict] = {}
        self.calls: list[Call] = []
        self.page_size = page_size  # small on purpose, so clients must follow `continue`
        self._lock = threading.Lock()
        cluster = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass

            def _do(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, payload = cluster._handle(self.command, self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _do  # noqa: N815 - http.server's naming

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(json.dumps({  # JSON is YAML
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
        }))
        return path

    # --- the scheduler and the kubelet, played by the test ---------------------------------------------------

    def add_pod(self, namespace: str, name: str, gpus: int = 0, labels: dict[str, str] | None = None,
                refused: str | None = None) -> dict:
        container = {"name": "main", "image": "team/image:1"}
        if gpus:
            container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "labels": labels or {},
                            "creationTimestamp": _now()},
               "spec": {"containers": [container]}, "status": {"phase": "Pending"}}
        with self._lock:
            self.pods[(namespace, name)] = pod
        if refused is not None:
            self.refuse(name, refused)
        return pod

    def _find(self, name_or_run_id: str) -> list[dict]:
        return [p for p in self.pods.values()
                if p["metadata"]["name"] == name_or_run_id
                or p["metadata"].get("labels", {}).get("dagster/run-id") == name_or_run_id]

    def place(self, name_or_run_id: str, node: str = "h100-1") -> None:
        """The scheduler binds the pod (or the run's pod) to a node; the kubelet starts it."""
        with self._lock:
            for pod in self._find(name_or_run_id):
                pod["spec"]["nodeName"] = node
                pod["status"] = {"phase": "Running",
                                 "conditions": [{"type": "PodScheduled", "status": "True"}]}

    def refuse(self, name_or_run_id: str, message: str = GPU_FULL) -> None:
        """The scheduler tried and could not place the pod."""
        with self._lock:
            for pod in self._find(name_or_run_id):
                pod["status"] = {"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]}

    def finish_deletions(self) -> list[str]:
        """Pods marked for deletion are gone."""
        with self._lock:
            gone = [k for k, p in self.pods.items() if p["metadata"].get("deletionTimestamp")]
            for key in gone:
                del self.pods[key]
        return [name for _, name in gone]

    def deletes(self, kind: str = "jobs") -> list[str]:
        return [c.path.rsplit("/", 1)[1] for c in self.calls if c.method == "DELETE" and f"/{kind}/" in c.path]

    # --- the API --------------------------------------------------------------------------------------------

    def _handle(self, method: str, raw_path: str, body: dict | None) -> tuple[int, dict]:
        parts = urlsplit(raw_path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        segs = parts.path.strip("/").split("/")
        with self._lock:
            self.calls.append(Call(method, parts.path, query))
            if method == "GET" and parts.path in ("/api/v1/pods",):
                return self._list(None, query)
            if segs[:3] == ["api", "v1", "namespaces"] and len(segs) == 5 and segs[4] == "pods" and method == "GET":
                return self._list(segs[3], query)
            if segs[:3] == ["api", "v1", "namespaces"] and len(segs) == 6 and segs[4] == "pods" and method == "DELETE":
                pod = self.pods.get((segs[3], segs[5]))
                if pod is None:
                    return self._status(404, f'pods "{segs[5]}" not found')
                pod["metadata"]["deletionTimestamp"] = _now()
                return 200, pod
            if (segs[:4] == ["apis", "batch", "v1", "namespaces"] and len(segs) == 6 and segs[5] == "jobs"
                    and method == "POST" and body is not None):
                return self._create_job(segs[4], body)
            if segs[:4] == ["apis", "batch", "v1", "namespaces"] and len(segs) == 7 and method == "DELETE":
                job = self.jobs.pop((segs[4], segs[6]), None)
                if job is None:
                    return self._status(404, f'jobs.batch "{segs[6]}" not found')
                return self._status(200, "", status="Success")
        return self._status(404, f"no route for {method} {parts.path}")

    @staticmethod
    def _status(code: int, message: str, status: str = "Failure") -> tuple[int, dict]:
        return code, {"apiVersion": "v1", "kind": "Status", "status": status, "message": message, "code": code}

    def _list(self, namespace: str | None, query: dict[str, str]) -> tuple[int, dict]:
        pods = [p for (ns, _), p in sorted(self.pods.items())
                if (namespace is None or ns == namespace)
                and _label_match(p["metadata"].get("labels") or {}, query.get("labelSelector", ""))
                and _field_match(p, query.get("fieldSelector", ""))]
        start = int(query.get("continue") or 0)
        size = min(int(query.get("limit") or self.page_size), self.page_size)
        page, rest = pods[start:start + size], pods[start + size:]
        meta = {"resourceVersion": "1", **({"continue": str(start + size)} if rest else {})}
        return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": meta, "items": page}

    def _create_job(self, namespace: str, job: dict) -> tuple[int, dict]:
        name = job["metadata"]["name"]
        if (namespace, name) in self.jobs:
            return self._status(409, f'jobs.batch "{name}" already exists')
        job["metadata"].update({"namespace": namespace, "uid": str(uuid.uuid4()), "creationTimestamp": _now()})
        self.jobs[(namespace, name)] = job
        template = job["spec"]["template"]
        labels = {**(template.get("metadata", {}).get("labels") or {}), "job-name": name,
                  "batch.kubernetes.io/job-name": name}
        pod_name = f"{name}-{uuid.uuid4().hex[:5]}"
        self.pods[(namespace, pod_name)] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": namespace, "uid": str(uuid.uuid4()), "labels": labels,
                         "creationTimestamp": _now()},
            "spec": template["spec"], "status": {"phase": "Pending"},
        }
        return 201, job
