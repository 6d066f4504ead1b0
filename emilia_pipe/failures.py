"""Which episode failures another attempt can fix: the store's, not the data's.

An episode whose download or upload failed (the store unreachable, throttling, a timeout past the client's own
retries) is fine as data: the same batch run again a minute later processes it. An unreadable file, an exception in
the pipe, a worker that died twice on the same episode are facts about the episode (or the code): running again gives
the same failure. The runner words its errors with the two phrases below; `processed_segments` counts them to decide
whether a batch that failed too many episodes is worth a retry.
"""

from __future__ import annotations

import polars as pl

DOWNLOAD_FAILED = "download failed"
UPLOAD_FAILED = "upload failed"
_TRANSIENT = (f": {DOWNLOAD_FAILED}: ", f": {UPLOAD_FAILED}: ")


def is_transient(error: str | None) -> bool:
    """True for an episode error that names a failed download or upload (the runner's `<key>: <phrase>: ...`)."""
    return bool(error) and any(marker in error for marker in _TRANSIENT)


def data_failures(status: pl.DataFrame) -> int:
    """Failed episodes of a status table whose failure another attempt would repeat."""
    failed = status.filter(pl.col("status") == "failed")["error"].to_list()
    return sum(1 for error in failed if not is_transient(error))


def worth_retrying(status: pl.DataFrame, max_failure_fraction: float) -> bool:
    """For a batch that failed more than `max_failure_fraction` of its episodes: would it have stayed within the
    threshold without the store's failures? Then another attempt (which redoes only the failed episodes) may pass."""
    return bool(status.height) and data_failures(status) / status.height <= max_failure_fraction
