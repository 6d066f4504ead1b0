"""Waiting for Dagster runs that ends on lack of progress, not on a fixed total.

A fixed limit fails a healthy chain on a busy machine (a publish run still starting when 300 s were up) and lets a
stuck one sit until the limit. Here the clock restarts whenever the instance shows progress: a run appears, a run
changes status, or a pending run writes to its event log. After `no_progress_s` without any of that, the wait fails
with what was expected and each pending run's status, its last event and how long it has been quiet.
Used by `make demo` (its `--timeout`) and by the integration tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dagster as dg
from dagster import DagsterInstance, DagsterRunStatus

TERMINAL = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
DEFAULT_NO_PROGRESS_S = 180.0


class NoProgressError(TimeoutError):
    """Nothing moved for the allowed time; the message lists what was expected and what was pending."""


@dataclass
class _Seen:
    run: dg.DagsterRun
    changed_at: float  # monotonic time of its last status change or event
    cursor: str | None = None  # event log position already read
    last_event: str = "no event yet"


class RunWatch:
    """The runs of some jobs on one instance, polled; `poll()` says whether anything moved since the last poll."""

    def __init__(
        self, instance: DagsterInstance, jobs: Iterable[str] | None = None, log: Callable[[str], None] = print
    ):
        self.instance = instance
        self.jobs = None if jobs is None else list(jobs)
        self.log = log
        self.seen: dict[str, _Seen] = {}

    def poll(self) -> bool:
        now = time.monotonic()
        moved = False
        filters = [None] if self.jobs is None else [dg.RunsFilter(job_name=job) for job in self.jobs]
        for runs_filter in filters:
            for run in self.instance.get_runs(runs_filter):
                entry = self.seen.get(run.run_id)
                if entry is None or entry.run.status != run.status:
                    self.log(f"{run.job_name} run {run.run_id[:8]} batch {run.tags.get('dagster/partition')}: "
                             f"{run.status.value}")
                    if entry is None:
                        entry = self.seen[run.run_id] = _Seen(run, now)
                    entry.run, entry.changed_at, moved = run, now, True
                if run.status not in TERMINAL and self._read_events(entry):
                    entry.changed_at, moved = now, True
        return moved

    def _read_events(self, entry: _Seen) -> bool:
        """New event log records of a pending run since the last poll (a long step still logs per episode)."""
        conn = self.instance.get_records_for_run(entry.run.run_id, cursor=entry.cursor, limit=1000)
        if not conn.records:
            return False
        entry.cursor = conn.cursor
        last = conn.records[-1].event_log_entry
        kind = last.dagster_event.event_type.name if last.dagster_event else "log"
        entry.last_event = f"{kind}: {(last.user_message or last.message or '').strip()[:160]}"
        return True

    def finished(self) -> list[dg.DagsterRun]:
        return [e.run for e in self.seen.values() if e.run.status in TERMINAL]

    def pending_report(self) -> str:
        now = time.monotonic()
        pending = [e for e in self.seen.values() if e.run.status not in TERMINAL]
        if not pending:
            return "  no run pending: none has been requested yet (e.g. a sensor has not created it), or all finished"
        return "\n".join(
            f"  {e.run.job_name} run {e.run.run_id} batch {e.run.tags.get('dagster/partition')}: "
            f"{e.run.status.value}, quiet for {now - e.changed_at:.0f} s, last event {e.last_event}"
            for e in pending
        )


def wait_until(
    instance: DagsterInstance,
    done: Callable[[list[dg.DagsterRun]], bool],
    expected: Callable[[list[dg.DagsterRun]], str],
    jobs: Iterable[str] | None = None,
    no_progress_s: float = DEFAULT_NO_PROGRESS_S,
    poll_s: float = 1.0,
    log: Callable[[str], None] = print,
    check: Callable[[], None] | None = None,
) -> list[dg.DagsterRun]:
    """Poll until `done(finished runs)`; return the finished runs of `jobs` (all jobs when None).

    Raises `NoProgressError` after `no_progress_s` seconds in which no run appeared, changed status or logged an
    event; its message holds `expected(finished runs)` and the pending runs. `check` is called every poll and may
    raise (e.g. the process doing the work died).
    """
    watch = RunWatch(instance, jobs, log)
    last_progress = time.monotonic()
    while True:
        if watch.poll():
            last_progress = time.monotonic()
        finished = watch.finished()
        if done(finished):
            return finished
        if check is not None:
            check()
        quiet = time.monotonic() - last_progress
        if quiet >= no_progress_s:
            raise NoProgressError(
                f"no run progress for {quiet:.1f} s (limit {no_progress_s:g} s) while waiting for "
                f"{expected(finished)}; pending:\n{watch.pending_report()}"
            )
        time.sleep(poll_s)


def wait_for_runs(
    instance: DagsterInstance,
    expect: dict[str, int],
    no_progress_s: float = DEFAULT_NO_PROGRESS_S,
    poll_s: float = 1.0,
    log: Callable[[str], None] = print,
    check: Callable[[], None] | None = None,
) -> list[dg.DagsterRun]:
    """Return the finished runs once at least `expect[job]` runs of each job have finished (any outcome)."""

    def count(finished: list[dg.DagsterRun], job: str) -> int:
        return sum(r.job_name == job for r in finished)

    return wait_until(
        instance,
        done=lambda finished: all(count(finished, job) >= n for job, n in expect.items()),
        expected=lambda finished: "finished runs: " + ", ".join(
            f"{job} {count(finished, job)} of {n}" for job, n in expect.items()
        ),
        jobs=expect, no_progress_s=no_progress_s, poll_s=poll_s, log=log, check=check,
    )
