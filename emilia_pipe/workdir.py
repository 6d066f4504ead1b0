"""Scratch space for a batch on the pod's local disk, shared by the steps of one run."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from emilia_pipe.keys import slug


def batch_dir(batch_id: str) -> Path:
    root = Path(os.environ.get("EMILIA_WORK_DIR") or Path(tempfile.gettempdir()) / "emilia-forge")
    return root / slug(batch_id, 80)


@contextmanager
def batch_workdir(batch_id: str) -> Iterator[Path]:
    """Kept after the step (the next step of the run reuses the downloads); `processed_segments` removes it."""
    path = batch_dir(batch_id)
    path.mkdir(parents=True, exist_ok=True)
    yield path
