"""Enclosures that failed, remembered so a refresh does not fetch them again at once, and retried later and later.

Without a memory every daily refresh re-downloads every dead enclosure of every feed, forever: a host that answers
404, an HTML page or 3 GB where the cap is 2 GB gives the same answer tomorrow. So each failure is recorded in the
store beside the dedupe markers (`sources/_seen/failed/<sha256(url)[:24]>.json`, one record per enclosure URL across
sources, like the URL markers) with its reason, the number of failures and when the next attempt is due:

- the n-th failure in a row waits `first_delay_s * 2**(n-1)` (1 h, 2 h, 4 h, ...) capped at `max_delay_s` (7 days);
- it never gives up: past the cap a dead enclosure costs one request a week, and one that comes back (a host that was
  down, a file that was re-uploaded) still lands;
- a landing (or a skip as a duplicate) deletes the record.

Until it is due an enclosure is `deferred`: no request, reported with its last reason and next retry time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from emilia_sources.landing import SEEN_PREFIX
from emilia_store import ObjectStore

FAILED_PREFIX = f"{SEEN_PREFIX}failed/"


@dataclass(frozen=True)
class RetryPolicy:
    first_delay_s: float = 3600.0
    max_delay_s: float = 7 * 86400.0

    def delay_s(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failure in a row (1-based)."""
        return min(self.first_delay_s * 2.0 ** max(0, failures - 1), self.max_delay_s)


@dataclass(frozen=True)
class FailureRecord:
    url: str
    source_id: str  # the source of the latest failure
    reason: str
    failures: int  # failures in a row
    first_failed_at: str  # ISO 8601, UTC
    last_failed_at: str
    next_retry_at: str

    def due(self, now: float) -> bool:
        return now >= datetime.fromisoformat(self.next_retry_at).timestamp()


def failure_key(url: str) -> str:
    return f"{FAILED_PREFIX}{hashlib.sha256(url.encode('utf-8')).hexdigest()[:24]}.json"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def load_failure(store: ObjectStore, url: str) -> FailureRecord | None:
    """The URL's record, None when it has none. An unreadable record counts as none: the URL is simply tried."""
    try:
        data = json.loads(store.get_bytes(failure_key(url)))
        record = FailureRecord(**data)
        datetime.fromisoformat(record.next_retry_at)
    except KeyError:
        return None
    except (ValueError, TypeError):
        return None
    return record if record.url == url else None  # a hash collision is another URL's record


def record_failure(
    store: ObjectStore,
    url: str,
    source_id: str,
    reason: str,
    now: float,
    policy: RetryPolicy,
    previous: FailureRecord | None = None,
) -> FailureRecord:
    """Write (and return) the record after one more failure of `url`."""
    failures = (previous.failures if previous else 0) + 1
    record = FailureRecord(
        url=url,
        source_id=source_id,
        reason=reason,
        failures=failures,
        first_failed_at=previous.first_failed_at if previous else _iso(now),
        last_failed_at=_iso(now),
        next_retry_at=_iso(now + policy.delay_s(failures)),
    )
    store.put_bytes(failure_key(url), json.dumps(asdict(record), ensure_ascii=False).encode())
    return record


def clear_failure(store: ObjectStore, url: str) -> None:
    store.delete(failure_key(url))
