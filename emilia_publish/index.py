"""A batch's index (one row per sample, with its shard) and its file checksums, as Parquet.

The index lets a user (and the dataset card) query the release with polars without opening a tar; the checksums
let a re-publish skip shards whose bytes did not change and let anyone verify a download.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl

INDEX_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.String(),
    "shard": pl.String(),
    "language": pl.String(),
    "duration": pl.Float64(),
    "speaker": pl.String(),
    "dnsmos": pl.Float64(),  # OVRL, as Emilia's `dnsmos`
    "text": pl.String(),
    "episode_id": pl.String(),
    "source": pl.String(),
    "batch_id": pl.String(),
    # Which version of which raw object the sample comes from: the release holds one version per audio key.
    "audio_key": pl.String(),
    "episode_version": pl.String(),
    # Provenance and licence (null for samples published before they were recorded).
    "license": pl.String(),
    "model_set": pl.String(),
    "model_kind": pl.String(),
    "code_version": pl.String(),
}
# Columns an index written before them may lack; read as null.
OPTIONAL_INDEX_COLUMNS = ("audio_key", "episode_version", "license", "model_set", "model_kind", "code_version")
CHECKSUM_SCHEMA: dict[str, pl.DataType] = {
    "shard": pl.String(),
    "bytes": pl.Int64(),
    "samples": pl.Int64(),
    "sha256": pl.String(),
}
# `shards/<language>/<batch_id>-<n:05d>.tar` (emilia_store.layout.shard_key): the batch is in the file name.
_SHARD_NAME = re.compile(r"^(?P<batch>.+)-\d{5}\.tar$")


def batch_of_shard(shard: str) -> str | None:
    """The batch id in a shard's name, or None when the name does not follow `<batch_id>-<n:05d>.tar`."""
    m = _SHARD_NAME.match(PurePosixPath(shard).name)
    return m.group("batch") if m else None


def index_frame(samples: list[dict[str, Any]], shard_of: Mapping[str, str], *,
                batch_id: str | None = None) -> pl.DataFrame:
    """One row per sample: `samples` are the samples' JSON sidecars (`sample_meta`) or catalogue rows.

    The key is the sample's `id` (its tar member stem); `shard_of` maps it to its shard and must know every key,
    since an index row that points nowhere would be a broken promise to the user. `dnsmos` falls back to
    `dnsmos_ovrl` (catalogue rows); `batch_id` comes from the sample, else the argument, else the shard's name.
    Rows are sorted by (shard, key), the order of the tars themselves, so the same samples give the same bytes.
    """
    rows = []
    seen: set[str] = set()
    for s in samples:
        key = s["id"] if "id" in s else s["key"]
        if key in seen:
            raise ValueError(f"sample {key!r} appears twice: the release would hold it twice")
        seen.add(key)
        if key not in shard_of:
            raise KeyError(f"sample {key!r} has no shard in shard_of")
        shard = shard_of[key]
        rows.append({
            "key": key, "shard": shard, "language": s.get("language"), "duration": s.get("duration"),
            "speaker": s.get("speaker"), "dnsmos": s["dnsmos"] if "dnsmos" in s else s.get("dnsmos_ovrl"),
            "text": s.get("text"), "episode_id": s.get("episode_id"), "source": s.get("source"),
            "batch_id": s.get("batch_id") or batch_id or batch_of_shard(shard),
            **{c: s.get(c) for c in OPTIONAL_INDEX_COLUMNS},
        })
    return pl.DataFrame(rows, schema=INDEX_SCHEMA).sort("shard", "key")


def read_shard_samples(path: Path) -> list[dict[str, Any]]:
    """The JSON sidecars of a shard, in tar order: what `index_frame` needs when only the tars are at hand."""
    with tarfile.open(path) as tar:
        return [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]


def _count_samples(path: Path) -> int:
    if path.suffix == ".parquet":  # one row per sample
        return pl.scan_parquet(path).select(pl.len()).collect().item()
    # A sample is a key (member name up to the first dot, as WebDataset groups them), whatever its members.
    with tarfile.open(path) as tar:
        return len({PurePosixPath(m.name).name.split(".", 1)[0] for m in tar.getmembers() if m.isfile()})


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def shard_checksums(paths: Mapping[str, Path]) -> pl.DataFrame:
    """Per shard (the mapping's key: its name in the release), its size, sample count and SHA-256, sorted by shard."""
    rows = [{"shard": name, "bytes": path.stat().st_size, "samples": _count_samples(path), "sha256": _sha256(path)}
            for name, path in sorted(paths.items())]
    return pl.DataFrame(rows, schema=CHECKSUM_SCHEMA)


def frame_to_parquet(df: pl.DataFrame) -> bytes:
    """Parquet bytes (zstd, with statistics): the same frame gives the same bytes with the same polars."""
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()


def frame_from_parquet(data: bytes, schema: Mapping[str, pl.DataType],
                       optional: Iterable[str] = ()) -> pl.DataFrame:
    """Read Parquet bytes and check them against `schema` (columns in schema order, types cast); `optional`
    columns may be missing (null)."""
    df = pl.read_parquet(io.BytesIO(data))
    df = df.with_columns(pl.lit(None, schema[c]).alias(c) for c in optional if c not in df.columns)
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"parquet lacks columns {missing}; has {df.columns}")
    return df.select([pl.col(c).cast(t) for c, t in schema.items()])


def index_to_parquet(index: pl.DataFrame) -> bytes:
    return frame_to_parquet(index.select(list(INDEX_SCHEMA)))


def index_from_parquet(data: bytes) -> pl.DataFrame:
    return frame_from_parquet(data, INDEX_SCHEMA, OPTIONAL_INDEX_COLUMNS)


def checksums_to_parquet(checksums: pl.DataFrame) -> bytes:
    return frame_to_parquet(checksums.select(list(CHECKSUM_SCHEMA)))


def checksums_from_parquet(data: bytes) -> pl.DataFrame:
    return frame_from_parquet(data, CHECKSUM_SCHEMA)


def concat_indexes(indexes: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """Several batches' indexes as one release index; a key in two batches is an error, not a silent duplicate."""
    frames = [i.select(list(INDEX_SCHEMA)) for i in indexes]
    out = pl.concat(frames) if frames else pl.DataFrame(schema=INDEX_SCHEMA)
    dup = out.filter(pl.col("key").is_duplicated())["key"].unique().sort().to_list()
    if dup:
        raise ValueError(f"{len(dup)} keys in more than one index, e.g. {dup[:3]}")
    return out.sort("shard", "key")
