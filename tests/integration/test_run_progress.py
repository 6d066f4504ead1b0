"""The progress-based run waiter on a real instance: runs that keep moving are waited for however long they take;
a stall fails after the no-progress window with what was pending."""

from __future__ import annotations

import threading
import time

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.utils import make_new_run_id

from emilia_assets.run_progress import NoProgressError, wait_for_runs

WINDOW_S = 2.0


def add_run(instance: dg.DagsterInstance, job: str, partition: str = "b-1") -> dg.DagsterRun:
    """A run not started yet (the queued state would need a code location origin)."""
    run = dg.DagsterRun(job_name=job, run_id=make_new_run_id(), status=dg.DagsterRunStatus.NOT_STARTED,
                        tags={"dagster/partition": partition})
    return instance.add_run(run)


def report(instance: dg.DagsterInstance, run: dg.DagsterRun, kind: DagsterEventType, message: str = "") -> None:
    """An event as the run worker / launcher would write it (status events move the run's status)."""
    if kind == DagsterEventType.ENGINE_EVENT:
        instance.report_engine_event(message, run)
    else:
        event = DagsterEvent(event_type_value=kind.value, job_name=run.job_name, message=message)
        instance.report_dagster_event(event, run_id=run.run_id)


def test_a_run_that_keeps_moving_is_waited_for_past_the_window():
    steps = [DagsterEventType.RUN_STARTING, DagsterEventType.RUN_START, DagsterEventType.ENGINE_EVENT,
             DagsterEventType.ENGINE_EVENT, DagsterEventType.ENGINE_EVENT, DagsterEventType.RUN_SUCCESS]
    gap_s = WINDOW_S / 2  # each step comes well inside the window; all of them take 3x the window
    with dg.instance_for_test() as instance, dg.DagsterInstance.from_ref(instance.get_ref()) as writer:
        run = add_run(instance, "emilia_job")
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                for kind in steps:
                    time.sleep(gap_s)
                    report(writer, run, kind, "episode done")
            except BaseException as err:  # surfaced in the test below
                errors.append(err)

        thread = threading.Thread(target=worker)
        started = time.monotonic()
        thread.start()
        try:
            runs = wait_for_runs(instance, {"emilia_job": 1}, no_progress_s=WINDOW_S, poll_s=0.1, log=lambda _: None)
        finally:
            thread.join()
        assert not errors, errors
    waited = time.monotonic() - started
    assert [(r.run_id, r.status) for r in runs] == [(run.run_id, dg.DagsterRunStatus.SUCCESS)]
    assert waited > 2.5 * WINDOW_S


def test_a_stalled_run_fails_the_wait_and_is_named_with_its_status():
    with dg.instance_for_test() as instance:
        done = add_run(instance, "emilia_job")
        report(instance, done, DagsterEventType.RUN_SUCCESS)
        stuck = add_run(instance, "publish_job")
        report(instance, stuck, DagsterEventType.RUN_STARTING, "launching the run worker")
        started = time.monotonic()
        with pytest.raises(NoProgressError) as err:
            wait_for_runs(instance, {"emilia_job": 1, "publish_job": 1}, no_progress_s=WINDOW_S, poll_s=0.1,
                          log=lambda _: None)
    waited = time.monotonic() - started
    assert WINDOW_S <= waited < WINDOW_S + 5
    message = str(err.value)
    assert "emilia_job 1 of 1, publish_job 0 of 1" in message
    assert f"publish_job run {stuck.run_id} batch b-1: STARTING" in message
    assert "RUN_STARTING" in message  # its last event
    assert done.run_id not in message  # finished runs are not pending


def test_nothing_requested_says_so_and_a_failing_check_ends_the_wait():
    with dg.instance_for_test() as instance:
        with pytest.raises(NoProgressError, match="no run pending"):
            wait_for_runs(instance, {"emilia_job": 1}, no_progress_s=0.3, poll_s=0.05, log=lambda _: None)

        def daemon_died() -> None:
            raise RuntimeError("dagster-daemon exited with 1")

        with pytest.raises(RuntimeError, match="daemon exited"):
            wait_for_runs(instance, {"emilia_job": 1}, no_progress_s=60, poll_s=0.05, check=daemon_died)
