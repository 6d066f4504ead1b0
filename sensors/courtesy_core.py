"""The GPU courtesy decision, as a pure function of what the cluster and our run queue look like.

We share the GPU nodes with other teams. `sensors/gpu_courtesy.py` reads pods through the Kubernetes client and our
runs through the Dagster instance, turns them into a `ClusterView` here (`build_view`) and applies the `Decision`
(`decide`). Nothing in this module imports Dagster or Kubernetes, so every rule is tested as plain data.

The rules:
- Another team's pod waits for GPUs (the scheduler declared it Unschedulable for lack of them): launch nothing more
  (the pool limit drops to the runs we keep), terminate each of our runs whose own pod still waits (it would take the
  GPUs we free), then our GPU-holding runs newest first (the least work lost) until what they free, plus what our runs
  already on their way out free, covers what the others wait for. A terminated batch loses nothing: the sensor
  re-queues it and it resumes from its per-episode completion markers.
- A waiting pod is served once: the runs terminated for it are remembered (`OurRun.serves`, `ForeignPod.served_at`),
  so a second tick neither counts their GPUs for someone else nor terminates more for the same pod while the
  scheduler places it. If it still waits `patience_s` after we made room, it evidently needs something other than our
  GPUs (a node type, a zone) and is ignored from then on, so one stuck pod cannot stop our pipeline for good.
- Nobody else waits: never terminate; let queued batches launch one at a time until exactly one of our pods waits
  (pool limit = our runs holding GPUs + 1; with one of ours waiting that equals what is in flight, so nothing more
  launches until it is placed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

WAITING = "waiting"  # launched; its pod is not placed on a node yet (or not created yet): holds no GPU
HOLDING = "holding"  # its pod is placed on a node: holds its GPUs
LEAVING = "leaving"  # being terminated or finishing: its GPUs free up by themselves; never terminated twice

ACTIVE_STATUSES = ("STARTING", "STARTED", "CANCELING")  # the Dagster run statuses that hold a pool slot


@dataclass(frozen=True)
class CourtesySettings:
    """What the sensor reads from `GPU_COURTESY_*` (see `from_env`; the README has the table)."""

    namespaces: tuple[str, ...] = ()  # where to look for pods; empty: the whole cluster
    gpu_resource: str = "nvidia.com/gpu"
    gpus_per_node: int = 8  # one batch run = one whole node; a foreign pod asking for more can never fit
    min_limit: int = 0
    max_limit: int | None = None  # e.g. the number of GPU nodes we may use
    patience_s: float = 600.0
    dry_run: bool = False
    kubeconfig: str | None = None  # None: in-cluster service account, else $KUBECONFIG / ~/.kube/config
    kube_context: str | None = None

    def __post_init__(self) -> None:
        if self.gpus_per_node < 1:
            raise ValueError(f"GPU_COURTESY_GPUS_PER_NODE must be at least 1, got {self.gpus_per_node}")
        if self.min_limit < 0:
            raise ValueError(f"GPU_COURTESY_MIN_LIMIT must not be negative, got {self.min_limit}")
        if self.max_limit is not None and self.max_limit < max(self.min_limit, 1):
            raise ValueError(f"GPU_COURTESY_MAX_LIMIT ({self.max_limit}) must be at least 1 and at least "
                             f"GPU_COURTESY_MIN_LIMIT ({self.min_limit})")
        if self.patience_s <= 0:
            raise ValueError(f"GPU_COURTESY_PATIENCE_S must be positive, got {self.patience_s}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CourtesySettings:
        """Settings from environment variables; a malformed value is an error naming the variable."""

        def text(name: str) -> str:
            return (env.get(name) or "").strip()

        def number(name: str, default: float, kind: type = int) -> float:
            raw = text(name)
            if not raw:
                return default
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None

        max_limit = text("GPU_COURTESY_MAX_LIMIT")
        return cls(
            namespaces=tuple(ns.strip() for ns in text("GPU_COURTESY_NAMESPACES").split(",") if ns.strip()),
            gpu_resource=text("GPU_COURTESY_GPU_RESOURCE") or "nvidia.com/gpu",
            gpus_per_node=int(number("GPU_COURTESY_GPUS_PER_NODE", 8)),
            min_limit=int(number("GPU_COURTESY_MIN_LIMIT", 0)),
            max_limit=int(number("GPU_COURTESY_MAX_LIMIT", 0)) if max_limit else None,
            patience_s=float(number("GPU_COURTESY_PATIENCE_S", 600.0, float)),
            dry_run=text("GPU_COURTESY_DRY_RUN").lower() in ("1", "true", "yes"),
            kubeconfig=text("GPU_COURTESY_KUBECONFIG") or None,
            kube_context=text("GPU_COURTESY_KUBE_CONTEXT") or None,
        )


@dataclass(frozen=True)
class PodFacts:
    """The few facts about one pod the decision needs (`sensors/k8s_pods.py` reads them from the API)."""

    namespace: str
    name: str
    uid: str
    run_id: str | None = None  # the `dagster/run-id` label the K8sRunLauncher puts on run pods
    gpus: int = 0  # GPUs the pod requests (`gpu_resource`)
    phase: str = "Pending"
    scheduled: bool = False  # `spec.nodeName` is set: the node's GPUs are allocated to it, even while it starts
    deleting: bool = False  # `metadata.deletionTimestamp` is set
    unschedulable: str | None = None  # the scheduler's message when it declared the pod Unschedulable, else None

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    def waits_for(self, gpu_resource: str) -> bool:
        """Pending, unplaced, asking for GPUs, and the scheduler said it could not place it for lack of them.

        A pod the scheduler has not tried yet may well fit on free GPUs, and one refused for another reason only
        (a node selector no node matches) gains nothing from ours, so neither counts.
        """
        if self.phase != "Pending" or self.scheduled or self.deleting or self.gpus <= 0 or self.unschedulable is None:
            return False
        return not self.unschedulable or f"Insufficient {gpu_resource}" in self.unschedulable


@dataclass(frozen=True)
class RunFacts:
    """One of our runs in the GPU pool, as the Dagster instance sees it."""

    run_id: str
    status: str  # one of ACTIVE_STATUSES
    launched_at: float  # when it started (or was launched); orders "newest first"


@dataclass(frozen=True)
class OurRun:
    run_id: str
    launched_at: float
    gpus: int  # what it holds (HOLDING), will hold (WAITING) or frees (LEAVING)
    state: str  # WAITING, HOLDING or LEAVING
    serves: frozenset[str] = frozenset()  # uids of the waiting pods it was terminated to make room for


@dataclass(frozen=True)
class ForeignPod:
    uid: str
    name: str  # namespace/name, for the log
    gpus: int
    served_at: float | None = None  # when we made room for it, if we did


@dataclass(frozen=True)
class ClusterView:
    runs: tuple[OurRun, ...] = ()  # our launched runs (every status that holds a pool slot), plus leaving ones
    foreign: tuple[ForeignPod, ...] = ()  # other teams' pods waiting for GPUs
    queued: int = 0  # our runs waiting in Dagster's queue (informational: the pool limit is what gates them)
    now: float = 0.0


@dataclass(frozen=True)
class Decision:
    pool_limit: int
    terminate: tuple[str, ...] = ()  # run ids, newest first
    serves: frozenset[str] = frozenset()  # the waiting pods this tick makes room for
    attribute: tuple[str, ...] = ()  # runs (terminated now or already leaving) whose GPUs go to `serves`
    reason: str = ""


def build_view(
    pods: Iterable[PodFacts],
    runs: Iterable[RunFacts],
    our_run_ids: Iterable[str],
    settings: CourtesySettings,
    now: float,
    queued: int = 0,
    served: Mapping[str, float] | None = None,
    serves_by_run: Mapping[str, Iterable[str]] | None = None,
) -> ClusterView:
    """Classify the pods: ours (their `dagster/run-id` is a run of our instance), or another team's waiting pod.

    `runs` are our runs that hold a pool slot; `our_run_ids` every run id of our instance seen on a pod (finished
    ones too, so a pod of a run we just terminated is never mistaken for someone else's). `served` maps the uid of
    each waiting pod we already made room for to when, `serves_by_run` each run we terminated to those uids.
    """
    pods = list(pods)
    served = served or {}
    serves_by_run = serves_by_run or {}
    ours = set(our_run_ids)
    pods_of: dict[str, list[PodFacts]] = {}
    for pod in pods:
        if pod.run_id is not None and pod.run_id in ours:
            pods_of.setdefault(pod.run_id, []).append(pod)

    our_runs = []
    for run in runs:
        live = [p for p in pods_of.get(run.run_id, []) if not p.finished]
        held = sum(p.gpus for p in live if p.scheduled)
        if run.status == "CANCELING" or any(p.deleting for p in live):
            state, gpus = LEAVING, held
        elif any(p.scheduled for p in live):
            state, gpus = HOLDING, held
        elif live:
            state, gpus = WAITING, max(p.gpus for p in live)
        elif pods_of.get(run.run_id):  # its pod has finished: the run is wrapping up
            state, gpus = LEAVING, 0
        else:  # launched, its pod not created yet
            state, gpus = WAITING, settings.gpus_per_node
        our_runs.append(OurRun(run.run_id, run.launched_at, gpus, state,
                               frozenset(serves_by_run.get(run.run_id, ()))))
    # A run Dagster already marks finished can still have its pod on a node while the pod shuts down.
    active = {r.run_id for r in our_runs}
    for run_id, run_pods in sorted(pods_of.items()):
        held = sum(p.gpus for p in run_pods if p.scheduled and p.deleting and not p.finished)
        if run_id not in active and held:
            our_runs.append(OurRun(run_id, 0.0, held, LEAVING, frozenset(serves_by_run.get(run_id, ()))))

    foreign = tuple(
        ForeignPod(p.uid, f"{p.namespace}/{p.name}", p.gpus, served.get(p.uid))
        for p in sorted(pods, key=lambda p: (p.namespace, p.name))
        if not (p.run_id is not None and p.run_id in ours)
        and p.waits_for(settings.gpu_resource)
        and p.gpus <= settings.gpus_per_node
    )
    return ClusterView(tuple(our_runs), foreign, queued, now)


def _clamp(limit: int, settings: CourtesySettings) -> int:
    upper = settings.max_limit if settings.max_limit is not None else math.inf
    return int(max(settings.min_limit, min(limit, upper), 0))


def newest_first(runs: Iterable[OurRun]) -> list[OurRun]:
    return sorted(runs, key=lambda r: (r.launched_at, r.run_id), reverse=True)


def decide(view: ClusterView, settings: CourtesySettings) -> Decision:
    """The pool limit to set and the runs to terminate (see the module docstring for the rules)."""
    kept = [r for r in view.runs if r.state != LEAVING]
    holding = [r for r in kept if r.state == HOLDING]
    waiting = [r for r in kept if r.state == WAITING]
    foreign = [p for p in view.foreign if p.served_at is None or view.now - p.served_at < settings.patience_s]
    ignored = len(view.foreign) - len(foreign)
    ignored_note = f"; {ignored} pod(s) still waiting long after we made room are ignored" if ignored else ""

    if not foreign:
        limit = _clamp(len(holding) + 1, settings)
        if waiting:
            why = f"{len(waiting)} of our pods waiting for a node: no further launch"
        elif view.queued:
            why = f"none of ours waiting, {view.queued} queued: one more may launch"
        else:
            why = "no one waiting, nothing queued"
        return Decision(limit, reason=f"{why} (pool limit {limit}, {len(holding)} holding GPUs){ignored_note}")

    waiting_uids = {p.uid for p in foreign}
    unserved = [p for p in foreign if p.served_at is None]
    need = sum(p.gpus for p in unserved)
    # Runs already on their way out count for the newcomers, except those freeing GPUs for a pod that still waits.
    free = [r for r in view.runs if r.state == LEAVING and r.gpus > 0 and not r.serves & waiting_uids]
    freeing = sum(r.gpus for r in free)
    chosen = list(waiting)  # our own waiting pods would compete for whatever frees up
    attribute = []
    if need > 0:
        attribute = [r.run_id for r in free]
        for run in newest_first(holding):
            if freeing >= need:
                break
            chosen.append(run)
            freeing += run.gpus
    chosen = newest_first(chosen)
    terminate = tuple(r.run_id for r in chosen)
    limit = _clamp(len(kept) - len(chosen), settings)
    names = ", ".join(f"{p.name} ({p.gpus})" for p in foreign)
    reason = (
        f"others wait for GPUs: {names}; {need} GPUs not yet made room for, {freeing} freed or freeing; "
        f"terminating {len(terminate)} run(s), pool limit {limit}{ignored_note}"
    )
    serves = frozenset(p.uid for p in unserved) if need > 0 else frozenset()
    attribute_all = tuple(attribute) + tuple(r.run_id for r in chosen if r.state == HOLDING)
    return Decision(limit, terminate, serves, attribute_all if serves else (), reason)


@dataclass
class CourtesyMemory:
    """What the sensor remembers between ticks (its cursor): whom we made room for, and with which runs.

    Entries live only while the pod still waits / the run is still leaving, so the memory stays small.
    """

    served: dict[str, float] = field(default_factory=dict)  # waiting pod uid -> when we made room for it
    serves_by_run: dict[str, list[str]] = field(default_factory=dict)  # run id -> pod uids it makes room for

    def after(self, view: ClusterView, decision: Decision, now: float) -> CourtesyMemory:
        waiting = {p.uid for p in view.foreign}
        leaving_or_active = {r.run_id for r in view.runs}
        served = {uid: at for uid, at in self.served.items() if uid in waiting}
        for uid in decision.serves:
            served.setdefault(uid, now)
        serves_by_run = {rid: uids for rid, uids in self.serves_by_run.items() if rid in leaving_or_active}
        for rid in decision.attribute:
            serves_by_run[rid] = sorted(set(serves_by_run.get(rid, [])) | decision.serves)
        return CourtesyMemory(served, serves_by_run)

    def dumps(self) -> str:
        return json.dumps({"served": self.served, "serves_by_run": self.serves_by_run}, sort_keys=True)

    @classmethod
    def loads(cls, text: str | None) -> CourtesyMemory:
        """The memory in a cursor; a missing or unreadable cursor is an empty memory (a fresh start, not an error)."""
        try:
            data = json.loads(text) if text else {}
            return cls({str(k): float(v) for k, v in data.get("served", {}).items()},
                       {str(k): [str(u) for u in v] for k, v in data.get("serves_by_run", {}).items()})
        except (ValueError, TypeError, AttributeError):
            return cls()
