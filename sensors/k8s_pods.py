"""Reading pods through the Kubernetes client for the GPU courtesy sensor (no Dagster here).

Two list calls per tick, both paged: every Pending pod (other teams' pods waiting for GPUs, and ours), and our run pods
in any phase but finished (the K8sRunLauncher labels them `dagster/run-id`), which tells whether each of our runs holds
a node, waits for one, or is being deleted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from kubernetes import client, config
from kubernetes.utils import parse_quantity

from sensors.courtesy_core import CourtesySettings, PodFacts

RUN_ID_LABEL = "dagster/run-id"
PAGE = 500
TIMEOUT_S = 30  # a hung API server fails the tick instead of hanging it


class NoKubernetesConfig(RuntimeError):
    """Neither an in-cluster service account nor a kubeconfig: the sensor skips rather than fails."""


def core_api(settings: CourtesySettings) -> client.CoreV1Api:
    """A client of its own (the process-wide default configuration is left alone).

    In a pod with no kubeconfig named, the pod's service account; otherwise `GPU_COURTESY_KUBECONFIG`, `KUBECONFIG`
    or ~/.kube/config, with `GPU_COURTESY_KUBE_CONTEXT` choosing the context.
    """
    if settings.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException as e:
            raise NoKubernetesConfig(f"in-cluster Kubernetes configuration unusable: {e}") from e
        return client.CoreV1Api(client.ApiClient(cfg))
    path = settings.kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    first = path.split(os.pathsep)[0]
    if not os.path.exists(first):
        raise NoKubernetesConfig(f"no Kubernetes configuration: not in a pod and no kubeconfig at {first}")
    try:
        api = config.new_client_from_config(config_file=path, context=settings.kube_context, persist_config=False)
    except config.ConfigException as e:
        raise NoKubernetesConfig(f"kubeconfig {path} unusable: {e}") from e
    return client.CoreV1Api(api)


def _gpus(resources: client.V1ResourceRequirements | None, gpu_resource: str) -> int:
    if resources is None:
        return 0
    # Extended resources: a limit alone implies the same request.
    value = (resources.requests or {}).get(gpu_resource) or (resources.limits or {}).get(gpu_resource)
    return int(parse_quantity(value)) if value is not None else 0


def pod_facts(pod: client.V1Pod, gpu_resource: str) -> PodFacts:
    """What the decision needs from one pod: its run, its GPUs, whether it is placed, deleted, unschedulable."""
    meta, spec, status = pod.metadata, pod.spec, pod.status
    containers = sum(_gpus(c.resources, gpu_resource) for c in spec.containers or [])
    init = max((_gpus(c.resources, gpu_resource) for c in spec.init_containers or []), default=0)
    unschedulable = None
    for cond in (status.conditions if status else None) or []:
        if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
            unschedulable = cond.message or ""
    return PodFacts(
        namespace=meta.namespace or "",
        name=meta.name or "",
        uid=meta.uid or f"{meta.namespace}/{meta.name}",
        run_id=(meta.labels or {}).get(RUN_ID_LABEL),
        gpus=max(containers, init),
        phase=(status.phase if status else None) or "Pending",
        scheduled=bool(spec.node_name),
        deleting=meta.deletion_timestamp is not None,
        unschedulable=unschedulable,
    )


def _paged(api: client.CoreV1Api, namespace: str | None, **selectors: str) -> Iterator[client.V1Pod]:
    token = None
    while True:
        kwargs = {"limit": PAGE, "_request_timeout": TIMEOUT_S, **selectors, **({"_continue": token} if token else {})}
        page = (api.list_namespaced_pod(namespace, **kwargs) if namespace
                else api.list_pod_for_all_namespaces(**kwargs))
        yield from page.items
        token = page.metadata._continue if page.metadata else None
        if not token:
            return


def list_pods(api: client.CoreV1Api, settings: CourtesySettings) -> list[PodFacts]:
    """Every Pending pod and every unfinished pod of a Dagster run, in `settings.namespaces` (empty: all)."""
    seen: dict[str, PodFacts] = {}
    for namespace in settings.namespaces or (None,):
        for selectors in ({"field_selector": "status.phase=Pending"},
                          {"label_selector": RUN_ID_LABEL,
                           "field_selector": "status.phase!=Succeeded,status.phase!=Failed"}):
            for pod in _paged(api, namespace, **selectors):
                facts = pod_facts(pod, settings.gpu_resource)
                seen[facts.uid] = facts
    return list(seen.values())
