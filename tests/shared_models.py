"""Real model files that some tests read from `../shared/models` beside the checkout (never part of the repo).

A test that needs them is marked `@needs_shared_models("dnsmos/sig_bak_ovr.onnx", ...)`. Where a file is absent
the test is skipped with a reason naming it (`make test` prints skip reasons); with EMILIA_REQUIRE_SHARED_MODELS=1,
which CI sets because it has the folder, the test fails instead, so CI cannot pass by skipping them.
EMILIA_SHARED_MODELS_DIR points the tests at another folder (the test of this rule uses an empty one).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_MODELS = Path(os.environ.get("EMILIA_SHARED_MODELS_DIR") or ROOT.parent / "shared" / "models")
REQUIRE_ENV = "EMILIA_REQUIRE_SHARED_MODELS"
MARK = "shared_models"


def needs_shared_models(*files: str) -> pytest.MarkDecorator:
    """Mark a test as reading `files` (paths relative to the shared models folder)."""
    return getattr(pytest.mark, MARK)(*files)


def missing(files: tuple[str, ...]) -> list[str]:
    return [f for f in files if not (SHARED_MODELS / f).is_file()]


def required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def _reason(item: pytest.Item) -> str | None:
    mark = item.get_closest_marker(MARK)
    absent = missing(mark.args) if mark else []
    if not absent:
        return None
    return f"real model files not found in {SHARED_MODELS}: {', '.join(absent)} (see its README.md)"


def skip_where_absent(items: list[pytest.Item]) -> None:
    """At collection: a skip mark with the reason, so the report names each test (unless the files are required)."""
    if required():
        return
    for item in items:
        if reason := _reason(item):
            item.add_marker(pytest.mark.skip(reason=reason))


def fail_where_required(item: pytest.Item) -> None:
    """At setup, where the files are required: the test fails and says which files are absent."""
    if required() and (reason := _reason(item)):
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
