"""The GPU courtesy decision as a pure function: the six situations of the issue, the edge cases, and invariants."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.courtesy_core import (
    HOLDING,
    LEAVING,
    WAITING,
    ClusterView,
    CourtesyMemory,
    CourtesySettings,
    ForeignPod,
    OurRun,
    PodFacts,
    RunFacts,
    build_view,
    decide,
)

ROOT = Path(__file__).resolve().parents[2]
S = CourtesySettings()
NOW = 10_000.0


def run(rid: str, at: float, state: str = HOLDING, gpus: int = 8, serves: frozenset[str] = frozenset()) -> OurRun:
    return OurRun(rid, at, gpus, state, serves)


def other(uid: str, gpus: int = 8, served_at: float | None = None) -> ForeignPod:
    return ForeignPod(uid, f"team-x/{uid}", gpus, served_at)


HOLD3 = (run("r1", 1), run("r2", 2), run("r3", 3))

# (name, view, expected pool limit, expected terminations newest first)
SITUATIONS = [
    ("idle cluster", ClusterView(now=NOW), 1, ()),
    ("backlog, none pending", ClusterView(HOLD3, queued=5, now=NOW), 4, ()),
    ("one of ours pending", ClusterView((*HOLD3, run("r4", 4, WAITING)), queued=5, now=NOW), 4, ()),
    ("another team's pod pending", ClusterView(HOLD3, (other("p1"),), queued=5, now=NOW), 2, ("r3",)),
    ("both pending", ClusterView((*HOLD3, run("r4", 4, WAITING)), (other("p1"),), queued=5, now=NOW), 2,
     ("r4", "r3")),
    ("runs already terminating cover the need",
     ClusterView((*HOLD3, run("r0", 0.5, LEAVING)), (other("p1"),), now=NOW), 3, ()),
    ("runs already terminating cover part of the need",
     ClusterView((*HOLD3, run("r0", 0.5, LEAVING)), (other("p1"), other("p2", 4)), now=NOW), 2, ("r3",)),
]


@pytest.mark.parametrize(("name", "view", "limit", "terminate"), SITUATIONS, ids=[s[0] for s in SITUATIONS])
def test_situations(name, view, limit, terminate):
    decision = decide(view, S)
    assert decision.pool_limit == limit, decision.reason
    assert decision.terminate == terminate, decision.reason
    # With one of ours pending the limit equals what is in flight: Dagster's queue launches nothing more.
    in_flight = sum(r.state != LEAVING for r in view.runs)
    if name == "one of ours pending":
        assert decision.pool_limit == in_flight
    if view.foreign:  # others waiting: nothing more launches (limit <= runs Dagster keeps counting)
        assert decision.pool_limit <= in_flight - len(terminate)
        assert "team-x/p1" in decision.reason


def test_leaving_runs_are_attributed_to_the_pods_they_make_room_for():
    view = ClusterView((*HOLD3, run("r0", 0.5, LEAVING)), (other("p1"), other("p2", 4)), now=NOW)
    d = decide(view, S)
    assert d.serves == {"p1", "p2"}
    assert set(d.attribute) == {"r0", "r3"}


def test_several_of_ours_pending_hold_back_even_when_one_finishes():
    view = ClusterView((run("r1", 1), run("r2", 2, WAITING), run("r3", 3, WAITING)), queued=4, now=NOW)
    d = decide(view, S)
    assert d.terminate == ()
    assert d.pool_limit == 2  # holding + 1: in flight is 3, and stays above the limit until two are placed


def test_others_need_more_than_we_hold_terminates_everything_and_stops_launches():
    d = decide(ClusterView(HOLD3, (other("p1"), other("p2"), other("p3"), other("p4")), now=NOW), S)
    assert d.terminate == ("r3", "r2", "r1")
    assert d.pool_limit == 0


def test_a_small_request_costs_one_whole_run():
    d = decide(ClusterView(HOLD3, (other("p1", 2),), now=NOW), S)
    assert d.terminate == ("r3",)


def test_a_pod_we_made_room_for_is_not_served_twice_but_a_newcomer_is():
    # r3 left for p1; p1 still waits (the scheduler has not placed it yet): nothing more for p1.
    leaving = run("r3", 3, LEAVING, serves=frozenset({"p1"}))
    view = ClusterView((run("r1", 1), run("r2", 2), leaving), (other("p1", served_at=NOW - 30),), now=NOW)
    d = decide(view, S)
    assert d.terminate == () and d.pool_limit == 2
    # A newcomer p2: r3's GPUs are p1's, so r2 goes for p2.
    view = ClusterView(view.runs, (*view.foreign, other("p2")), now=NOW)
    d = decide(view, S)
    assert d.terminate == ("r2",) and d.serves == {"p2"}


def test_a_pod_still_waiting_long_after_we_made_room_is_ignored():
    view = ClusterView((run("r1", 1), run("r2", 2)), (other("p1", served_at=NOW - S.patience_s - 1),), queued=3,
                       now=NOW)
    d = decide(view, S)
    assert d.terminate == ()
    assert d.pool_limit == 3  # back to pacing our own launches
    assert "ignored" in d.reason


def test_limits_are_clamped():
    s = CourtesySettings(min_limit=1, max_limit=2)
    assert decide(ClusterView(HOLD3, now=NOW), s).pool_limit == 2
    assert decide(ClusterView(HOLD3, (other("p1"), other("p2"), other("p3")), now=NOW), s).pool_limit == 1


@pytest.mark.parametrize(("env", "message"), [
    ({"GPU_COURTESY_MAX_LIMIT": "eight"}, "GPU_COURTESY_MAX_LIMIT must be an integer"),
    ({"GPU_COURTESY_PATIENCE_S": "soon"}, "GPU_COURTESY_PATIENCE_S must be a number"),
    ({"GPU_COURTESY_MIN_LIMIT": "-1"}, "GPU_COURTESY_MIN_LIMIT must not be negative"),
    ({"GPU_COURTESY_MIN_LIMIT": "3", "GPU_COURTESY_MAX_LIMIT": "2"}, "at least GPU_COURTESY_MIN_LIMIT"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        CourtesySettings.from_env(env)


def test_settings_from_env():
    s = CourtesySettings.from_env({"GPU_COURTESY_NAMESPACES": "emilia, team-x,", "GPU_COURTESY_MAX_LIMIT": "4",
                                   "GPU_COURTESY_DRY_RUN": "1", "GPU_COURTESY_GPU_RESOURCE": "amd.com/gpu"})
    assert s.namespaces == ("emilia", "team-x") and s.max_limit == 4 and s.dry_run and s.gpu_resource == "amd.com/gpu"
    assert CourtesySettings.from_env({}) == CourtesySettings()


# --- pods -> view ---------------------------------------------------------------------------------------------

GPU_FULL = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are available."


def pod(name: str, **kw) -> PodFacts:
    return PodFacts(kw.pop("namespace", "team-x"), name, kw.pop("uid", name), **kw)


@pytest.mark.parametrize(("facts", "waits"), [
    (pod("a", gpus=8, unschedulable=GPU_FULL), True),
    (pod("b", gpus=8, unschedulable=""), True),  # Unschedulable without a message: give it the benefit of doubt
    (pod("c", gpus=8), False),  # the scheduler has not tried it yet: it may fit on free GPUs
    (pod("d", gpus=8, unschedulable="0/4 nodes are available: 4 node(s) didn't match Pod's node affinity."), False),
    (pod("e", gpus=0, unschedulable="0/4 nodes are available: 4 Insufficient cpu."), False),
    (pod("f", gpus=8, unschedulable=GPU_FULL, deleting=True), False),
    (pod("g", gpus=8, unschedulable=GPU_FULL, scheduled=True), False),
    (pod("h", gpus=8, unschedulable=GPU_FULL, phase="Running"), False),
])
def test_what_counts_as_waiting_for_gpus(facts, waits):
    assert facts.waits_for("nvidia.com/gpu") is waits


def test_build_view_classifies_pods_and_runs():
    pods = [
        pod("run-a", namespace="emilia", run_id="a", gpus=8, scheduled=True, phase="Running"),
        pod("run-b", namespace="emilia", run_id="b", gpus=8, unschedulable=GPU_FULL),  # ours: never "foreign"
        pod("run-c", namespace="emilia", run_id="c", gpus=8, scheduled=True, deleting=True, phase="Running"),
        pod("run-e", namespace="emilia", run_id="e", gpus=8, scheduled=True, phase="Succeeded"),
        pod("run-z", namespace="emilia", run_id="z", gpus=8, scheduled=True, deleting=True, phase="Running"),
        pod("other-dagster", run_id="not-ours", gpus=8, unschedulable=GPU_FULL),
        pod("train", gpus=4, unschedulable=GPU_FULL),
        pod("huge", gpus=16, unschedulable=GPU_FULL),  # can never fit one of our nodes
        pod("cpu-only", gpus=0, unschedulable="0/4 nodes are available: 4 Insufficient cpu."),
    ]
    runs = [RunFacts("a", "STARTED", 1), RunFacts("b", "STARTING", 2), RunFacts("c", "STARTED", 3),
            RunFacts("d", "STARTING", 4), RunFacts("e", "STARTED", 5), RunFacts("f", "CANCELING", 6)]
    view = build_view(pods, runs, {"a", "b", "c", "d", "e", "f", "z"}, S, NOW, queued=2, served={"train": 5.0},
                      serves_by_run={"c": ["train"]})
    states = {r.run_id: (r.state, r.gpus) for r in view.runs}
    assert states == {
        "a": (HOLDING, 8),
        "b": (WAITING, 8),
        "c": (LEAVING, 8),  # its pod is being deleted
        "d": (WAITING, 8),  # launched, no pod yet: assumed one node
        "e": (LEAVING, 0),  # its pod finished; the run is wrapping up
        "f": (LEAVING, 0),  # CANCELING, no pod on a node
        "z": (LEAVING, 8),  # Dagster says finished, but its pod still holds the node while it shuts down
    }
    assert next(r for r in view.runs if r.run_id == "c").serves == {"train"}
    assert [(p.name, p.gpus, p.served_at) for p in view.foreign] == [
        ("team-x/other-dagster", 8, None), ("team-x/train", 4, 5.0)]
    assert view.queued == 2


def test_memory_keeps_only_what_still_matters():
    view = ClusterView((run("r1", 1), run("r3", 3, LEAVING)), (other("p1"), other("p2")), now=NOW)
    d = decide(view, S)
    mem = CourtesyMemory(served={"gone": 1.0}, serves_by_run={"finished-run": ["gone"]}).after(view, d, NOW)
    assert mem.served == {"p1": NOW, "p2": NOW}
    assert mem.serves_by_run == {"r1": ["p1", "p2"], "r3": ["p1", "p2"]}
    assert CourtesyMemory.loads(mem.dumps()) == mem
    assert CourtesyMemory.loads("not json") == CourtesyMemory()


# --- invariants -------------------------------------------------------------------------------------------------

UIDS = [f"p{i}" for i in range(6)]


@st.composite
def views(draw):
    n = draw(st.integers(0, 8))
    times = draw(st.lists(st.floats(0, 1000, allow_nan=False), min_size=n, max_size=n, unique=True))
    runs = tuple(
        OurRun(f"r{i}", t, draw(st.integers(0, 8)), draw(st.sampled_from([WAITING, HOLDING, LEAVING])),
               frozenset(draw(st.sets(st.sampled_from(UIDS), max_size=2))))
        for i, t in enumerate(times)
    )
    uids = draw(st.lists(st.sampled_from(UIDS), unique=True, max_size=4))
    foreign = tuple(
        ForeignPod(u, u, draw(st.integers(1, 8)),
                   draw(st.one_of(st.none(), st.floats(NOW - 2 * S.patience_s, NOW, allow_nan=False))))
        for u in uids
    )
    return ClusterView(runs, foreign, draw(st.integers(0, 20)), NOW)


@st.composite
def courtesy_settings(draw):
    lo = draw(st.integers(0, 2))
    hi = draw(st.one_of(st.none(), st.integers(max(lo, 1), 12)))
    return CourtesySettings(min_limit=lo, max_limit=hi)


@settings(max_examples=400, deadline=None)
@given(views(), courtesy_settings())
def test_invariants(view, s):
    d = decide(view, s)
    by_id = {r.run_id: r for r in view.runs}
    kept = [r for r in view.runs if r.state != LEAVING]
    active = [p for p in view.foreign if p.served_at is None or NOW - p.served_at < s.patience_s]
    hi = s.max_limit if s.max_limit is not None else 10**9
    assert s.min_limit <= d.pool_limit <= hi

    # Never terminate a run twice, never one already leaving, newest first.
    assert len(set(d.terminate)) == len(d.terminate)
    assert all(by_id[rid].state != LEAVING for rid in d.terminate)
    times = [by_id[rid].launched_at for rid in d.terminate]
    assert times == sorted(times, reverse=True)

    if not active:  # nobody else waits: never terminate; one more may launch only when none of ours waits
        assert d.terminate == ()
        assert d.pool_limit == max(s.min_limit, min(hi, sum(r.state == HOLDING for r in kept) + 1))
        return

    # Others wait: nothing more launches, and every one of our own waiting pods goes.
    if s.min_limit == 0:
        assert d.pool_limit <= len(kept) - len(d.terminate)
    assert {r.run_id for r in kept if r.state == WAITING} <= set(d.terminate)

    need = sum(p.gpus for p in active if p.served_at is None)
    waiting_uids = {p.uid for p in active}
    freeing = sum(r.gpus for r in view.runs if r.state == LEAVING and not r.serves & waiting_uids)
    holding = sorted((r for r in kept if r.state == HOLDING), key=lambda r: r.launched_at, reverse=True)
    chosen = [by_id[rid] for rid in d.terminate if by_id[rid].state == HOLDING]
    assert chosen == holding[: len(chosen)], "holding runs are taken newest first"
    freed = sum(r.gpus for r in chosen)
    if chosen:  # no more than needed plus one run: without the last one, the need would not be covered
        assert freeing + freed - chosen[-1].gpus < need
    if len(chosen) < len(holding):  # stopped early only because the need is covered
        assert freeing + freed >= need

