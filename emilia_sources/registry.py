"""The registry of sources: partition key -> URL and hints, kept in the object store (sources/registry/)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from emilia_store import ObjectStore

REGISTRY_PREFIX = "sources/registry/"
LIST_KEYS = {"podcast": "sources/podcast_feeds", "youtube": "sources/youtube_sources"}  # + .txt | .csv | .parquet


@dataclass(frozen=True)
class RegisteredSource:
    source_id: str
    kind: str  # podcast | youtube
    url: str
    language: str | None = None
    categories: list[str] = field(default_factory=list)


def registry_key(source_id: str) -> str:
    return f"{REGISTRY_PREFIX}{source_id}.json"


def register(store: ObjectStore, source: RegisteredSource) -> None:
    store.put_bytes(registry_key(source.source_id), json.dumps(asdict(source)).encode())


def lookup(store: ObjectStore, source_id: str) -> RegisteredSource:
    try:
        return RegisteredSource(**json.loads(store.get_bytes(registry_key(source_id))))
    except KeyError:
        raise KeyError(f"source {source_id!r} is not registered ({registry_key(source_id)} is missing)") from None
