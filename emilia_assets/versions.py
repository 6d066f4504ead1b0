"""Code versions of the assets: what the UI compares to tell batches made by older code or models from current ones.

Each asset's `code_version` is a short digest of the code that shapes its output (and, for processed_segments, of the
model set in `EMILIA_MODELS_DIR`), computed when the code location loads, without importing any ML library. A
materialization records the version it ran with (Dagster's `dagster/code_version` tag, and our `code_version`
metadata); when the location's version moves on, the UI marks the partitions materialized before as made by an older
code version, so the batches processed with last month's models stand out.

- processed_segments: `pipe-<emilia_pipe sources>.models-<kind>-<model set fingerprint>`
- raw_episodes: the probe (emilia_pipe.audio, batching) and the asset's module
- podcast_episodes / youtube_audio: emilia_sources and the asset's module
- hf_shards: emilia_publish and the asset's module
"""

from __future__ import annotations

import os
from pathlib import Path

from emilia_pipe.provenance import model_set_fingerprint, source_digest

_ROOT = Path(__file__).resolve().parent.parent
_ASSETS = _ROOT / "emilia_assets" / "assets"


def process_code_version(models_dir: str | None) -> str:
    """The Emilia pipe's sources and the model set: a new model set or a change to the pipe gives a new version."""
    kind, fingerprint = model_set_fingerprint(models_dir)
    return f"pipe-{source_digest(_ROOT / 'emilia_pipe')[:8]}.models-{kind}-{fingerprint[:8]}"


PROCESS_CODE_VERSION = process_code_version(os.environ.get("EMILIA_MODELS_DIR") or None)
PROBE_CODE_VERSION = "probe-" + source_digest(_ROOT / "emilia_pipe" / "audio.py", _ROOT / "emilia_pipe" / "batching.py",
                                              _ASSETS / "ingest.py")[:8]
SOURCES_CODE_VERSION = "ingest-" + source_digest(_ROOT / "emilia_sources", _ASSETS / "sources.py")[:8]
PUBLISH_CODE_VERSION = "publish-" + source_digest(_ROOT / "emilia_publish", _ASSETS / "publish.py")[:8]
