"""Object keys for the storage layout (README, "What happens").

Every key the platform writes is derived here, never taken raw from a feed, a title or a file name: a hostile name
cannot climb out of its prefix (`..`, absolute paths, control characters) and two sources cannot collide.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath

AUDIO_EXTENSIONS = frozenset(
    {".mp3", ".m4a", ".aac", ".wav", ".flac", ".ogg", ".opus", ".webm", ".mp4", ".mka", ".wma", ".aiff"}
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
UNKNOWN_LANGUAGE = "und"  # ISO 639-2 "undetermined"


def slug(text: str, max_len: int = 48) -> str:
    """A name reduced to `[A-Za-z0-9_-]`, never empty, never starting with a dash or dot."""
    cleaned = _UNSAFE.sub("-", text).strip("-_")[:max_len].strip("-_")
    return cleaned or "x"


def short_hash(text: str, n: int = 10) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def is_audio_key(key: str) -> bool:
    name = PurePosixPath(key).name
    return not name.startswith(".") and PurePosixPath(name).suffix.lower() in AUDIO_EXTENSIONS


def language_of_raw_key(key: str, raw_prefix: str) -> str:
    """`raw_audio/<language>/<source>/<file>` gives its language; files dropped elsewhere are undetermined."""
    rel = key[len(raw_prefix) :].lstrip("/") if key.startswith(raw_prefix) else key
    parts = rel.split("/")
    if len(parts) >= 2 and _LANGUAGE.match(parts[0]):
        return parts[0]
    return UNKNOWN_LANGUAGE


def source_of_raw_key(key: str, raw_prefix: str) -> str:
    rel = key[len(raw_prefix) :].lstrip("/") if key.startswith(raw_prefix) else key
    parts = rel.split("/")
    return slug(parts[-2]) if len(parts) >= 3 else "dropped"


def episode_id_for_key(key: str, version: str | None = None) -> str:
    """Readable and unique: the file's stem made safe, plus a hash of the whole key (two feeds may share ep1.mp3)
    and of the object's version (its ETag, or size and modification time: `ObjectInfo.version`).

    An episode is one version of an object: when the content under a key changes, the new content is a new episode
    (new id, new completion marker, new segments) and the release replaces the old one's segments with it
    (emilia_publish.release). `version=None` gives the id of the key alone, as manifests written before versions.
    """
    ident = key if version is None else f"{key}\n{version}"
    return f"{slug(PurePosixPath(key).stem)}-{short_hash(ident)}"


def safe_language(language: str | None) -> str:
    if language and _LANGUAGE.match(language):
        return language
    return UNKNOWN_LANGUAGE


def join(*parts: str) -> str:
    """Join key parts with `/`, refusing anything that could escape the store's root."""
    out: list[str] = []
    for part in parts:
        for piece in part.split("/"):
            if piece in ("", "."):
                continue
            if piece == ".." or "\\" in piece or "\x00" in piece:
                raise ValueError(f"unsafe key component {piece!r} in {parts!r}")
            out.append(piece)
    return "/".join(out)


def segment_name(episode_id: str, index: int) -> str:
    return f"{episode_id}_{index:06d}"
