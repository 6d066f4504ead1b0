"""One writer at a time for the release files: a lease in the store, taken and renewed by compare-and-swap.

The Dagster pool `release_writer` (one slot) already runs one publish at a time; this lock makes the store safe on
its own (a second deployment, a CLI run, an operator's UI materialization with another instance, a pool someone
raised). `release/lock.json` names its owner and an expiry; it is created with `If-None-Match: *`, renewed and taken
over (once expired) with `If-Match: <ETag>`, and read back after every write, so that a server which ignores the
conditions still cannot hand the lock to two owners at once without one of them noticing. A writer that dies leaves
a lock that expires after `ttl_s`; a live writer renews it (`heartbeat`) between steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from emilia_store import ObjectStore, PreconditionFailed
from emilia_store.layout import RELEASE_LOCK_KEY


class LockTimeout(TimeoutError):
    """Another writer held the release lock for longer than this writer would wait."""


class LockLost(RuntimeError):
    """This writer's lease was taken over (it expired): it must stop writing the release."""


class ReleaseLock:
    def __init__(self, store: ObjectStore, owner: str, *, ttl_s: float = 1800.0, wait_s: float = 6 * 3600.0,
                 poll_s: float = 2.0, log: Callable[[str], object] = print,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], object] = time.sleep) -> None:
        self.store, self.owner, self.ttl_s, self.wait_s, self.poll_s = store, owner, ttl_s, wait_s, poll_s
        self.log, self.clock, self.sleep = log, clock, sleep
        self.token: str | None = None
        self.renewed = 0.0
        self.waited_s = 0.0

    def _doc(self) -> bytes:
        now = self.clock()
        return json.dumps({"owner": self.owner, "expires": now + self.ttl_s, "renewed": now}).encode()

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            data, token = self.store.get_versioned(RELEASE_LOCK_KEY)
        except KeyError:
            return None, None
        try:
            return json.loads(data), token
        except ValueError:
            return {"owner": "(unreadable)", "expires": 0.0}, token

    def acquire(self) -> ReleaseLock:
        start = self.clock()
        announced = None
        while True:
            held, token = self._read()
            now = self.clock()
            if held is not None and held.get("owner") != self.owner and float(held.get("expires", 0)) > now:
                if now - start > self.wait_s:
                    raise LockTimeout(f"{self.store.describe()}: the release is locked by {held.get('owner')} "
                                      f"(until {held.get('expires'):.0f}); waited {now - start:.0f} s")
                if announced != held.get("owner"):
                    self.log(f"release: waiting for {held.get('owner')}, which is publishing")
                    announced = held.get("owner")
                self.sleep(self.poll_s)
                continue
            if held is not None and held.get("owner") != self.owner:
                self.log(f"release: taking over the expired lock of {held.get('owner')}")
            try:
                self.token = self.store.put_if(RELEASE_LOCK_KEY, self._doc(), token)
            except PreconditionFailed:
                continue  # someone else wrote it between our read and write: look again
            mine, self.token = self._read()  # write-then-validate, for servers that ignore the condition
            if mine is not None and mine.get("owner") == self.owner:
                self.renewed = self.clock()
                self.waited_s = self.renewed - start
                return self

    def heartbeat(self, force: bool = False) -> None:
        """Renew the lease when a third of it has passed (or now, with `force`); raises LockLost when it was taken."""
        if not force and self.clock() - self.renewed < self.ttl_s / 3:
            return
        try:
            self.token = self.store.put_if(RELEASE_LOCK_KEY, self._doc(), self.token)
        except PreconditionFailed:
            held, _ = self._read()
            raise LockLost(f"{self.store.describe()}: the release lock was taken by "
                           f"{(held or {}).get('owner', 'nobody')} while {self.owner} held it (expired?)") from None
        self.renewed = self.clock()

    def check(self) -> None:
        """Raise LockLost unless this writer still holds the lock."""
        held, token = self._read()
        if held is None or held.get("owner") != self.owner:
            raise LockLost(f"{self.store.describe()}: the release lock is held by "
                           f"{(held or {}).get('owner', 'nobody')}, not {self.owner}")
        self.token = token

    def release(self) -> None:
        held, _ = self._read()
        if held is not None and held.get("owner") == self.owner:
            self.store.delete(RELEASE_LOCK_KEY)
        self.token = None

    def __enter__(self) -> ReleaseLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
