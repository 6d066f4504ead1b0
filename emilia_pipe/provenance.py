"""What made a segment: the model of each stage that ran (name, revision, checksum), the model set's kind, the code.

`build_pipe_config` puts `pipe_provenance(...)` into the `PipeConfig`; the pipeline writes it into every episode's
`all_segments.json` (`episode.provenance`), the catalogue carries it per segment, and the release index and the card
carry it on (emilia_publish). The kind is what lets a release refuse the output of random-weight models: a model set
built by `emilia-forge models tiny` has kind `tiny`, and a release of it needs the test-release flag.

Checksums are the SHA-256 of a model file, or for a folder the SHA-256 over its files' relative paths and
SHA-256s; they are computed once per process (keyed by path, size and mtime), since the production Whisper alone is
a few GB. A model named by Hub id or URL that is not on disk has no checksum here: its `revision` says what is
pinned (the DNSMOS URLs pin a commit and their files a checksum, see `models.DNSMOS_FILES`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from emilia_pipe.models import DNSMOS_FILES, ModelSet

# Stage -> the ModelSet fields it loads.
STAGE_MODELS: dict[str, tuple[str, ...]] = {
    "separate": ("separation",),
    "diarize": ("diarization",),
    "asr": ("whisper",),
    "dnsmos": ("dnsmos_sig_bak_ovr", "dnsmos_p808"),
}
_HF_REVISION_DIR = Path(".cache") / "huggingface" / "download"
_ROOT = Path(__file__).resolve().parent.parent


def _sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@lru_cache(maxsize=256)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return _sha256_file(Path(path))


def checksum(path: Path) -> str:
    """SHA-256 of a file, or of a folder's (relative path, SHA-256) list; `.cache` folders are left out."""
    if path.is_file():
        st = path.stat()
        return _cached_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.relative_to(path).parts):
        h.update(f"{f.relative_to(path).as_posix()}\0{checksum(f)}\n".encode())
    return h.hexdigest()


def _hf_revision(path: Path) -> str | None:
    """The commit a `snapshot_download(local_dir=...)` fetched, from huggingface_hub's metadata in the folder."""
    folder = path if path.is_dir() else path.parent
    meta_dir = folder / _HF_REVISION_DIR
    if not meta_dir.is_dir():
        return None
    for meta in sorted(meta_dir.rglob("*.metadata")):
        first = meta.read_text(errors="replace").splitlines()[:1]
        if first and first[0].strip():
            return first[0].strip()
    return None


def describe_model(ref: str) -> dict[str, Any]:
    """Name, revision and checksum of one model reference (a local path, a Hub id, `hf://...` or a URL)."""
    path = Path(ref)
    if not ref.startswith(("hf://", "https://", "http://")) and path.exists():
        return {"name": path.name, "revision": _hf_revision(path), "sha256": checksum(path)}
    name = ref.rsplit("/", 1)[-1] if ref.startswith(("https://", "http://")) else ref
    return {"name": ref, "revision": "unpinned" if not ref.startswith("http") else "url",
            "sha256": DNSMOS_FILES.get(name)}


def code_version() -> str:
    """`EMILIA_CODE_VERSION` (the image sets it at build), else the git commit of this checkout (`-dirty` with
    local changes), else the installed package's version."""
    if os.environ.get("EMILIA_CODE_VERSION"):
        return os.environ["EMILIA_CODE_VERSION"]
    return _git_version() or _package_version()


@lru_cache(maxsize=1)
def _git_version() -> str | None:
    try:
        head = subprocess.run(["git", "-C", str(_ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return f"git:{head.stdout.strip()}" + ("-dirty" if dirty.stdout.strip() else "")


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"emilia-forge {version('emilia-forge')}"
    except PackageNotFoundError:
        return "unknown"


def model_set_id(doc: dict[str, Any]) -> str:
    """A short, stable name for a model-set description: the same models give the same id on every machine."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def pipe_provenance(models: ModelSet, stages: list[str] | tuple[str, ...], whisper_model: str = "") -> dict[str, Any]:
    """The provenance block of every episode this pipe makes.

    Only the stages that run name a model; when none runs (the cheap stages: standardise, VAD, segmentation), the
    kind is `none`, since nothing the model set holds shaped the output.
    """
    described: dict[str, Any] = {}
    for stage in stages:
        for field in STAGE_MODELS.get(stage, ()):
            ref = whisper_model if field == "whisper" and whisper_model else getattr(models, field)
            if ref:
                described[field] = describe_model(str(ref))
    doc = {"kind": models.kind if described else "none", "models": described}
    return {"model_set": {"id": model_set_id(doc), **doc}, "code_version": code_version()}


# ---- cheap fingerprints for Dagster's code versions ---------------------------------------------------------------
# A code location computes these when it loads (code servers, every run worker), so they must cost milliseconds, not
# the minutes a full checksum of a production Whisper takes: a local model file is fingerprinted by its size and the
# SHA-256 of its first and last MiB (any re-export or re-initialisation changes those), a Hub download by the commit
# it fetched. The full checksums stay where they matter, in each episode's provenance.

_EDGE = 1 << 20


def _quick_file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(_EDGE))
        if size > 2 * _EDGE:
            fh.seek(size - _EDGE)
            h.update(fh.read(_EDGE))
    return h.hexdigest()


def quick_model_digest(ref: str) -> str:
    """What identifies one model reference cheaply: the Hub commit a folder was fetched at, else the quick digest
    of its files; for a Hub id or URL, the reference itself (a URL pins a commit, a bare id is unpinned)."""
    path = Path(ref)
    if ref.startswith(("hf://", "https://", "http://")) or not path.exists():
        return f"ref:{ref}"
    revision = _hf_revision(path)
    if revision:
        return f"rev:{revision}"
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and ".cache" not in p.relative_to(path).parts)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(path).as_posix() if f != path else f.name}\0{_quick_file_digest(f)}\n".encode())
    return f"files:{h.hexdigest()}"


def model_set_fingerprint(models_dir: str | Path | None) -> tuple[str, str]:
    """(kind, 12-hex fingerprint) of the model set in `models_dir` (its models.json), or of the default Hub set
    when none is configured. A model set that cannot be read is ("missing", fingerprint of the reason): the code
    location still loads, and a run then fails with ModelSet.load's error naming the file."""
    try:
        models = ModelSet.load(models_dir) if models_dir else ModelSet()
    except (OSError, ValueError) as err:
        return "missing", hashlib.sha256(str(err).encode()).hexdigest()[:12]
    doc = {f: quick_model_digest(str(v)) if v else None
           for f, v in vars(models).items() if f != "kind"}
    return models.kind, model_set_id({"kind": models.kind, "models": doc})


def source_digest(*paths: Path) -> str:
    """12-hex SHA-256 over the Python sources under `paths` (files or packages), by path relative to the project:
    changes when the code changes, not when a comment elsewhere in the repository does."""
    h = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
        for f in files:
            h.update(f"{f.resolve().relative_to(_ROOT).as_posix()}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]
