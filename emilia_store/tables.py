"""Parquet tables in the store (manifests, probes, status, catalogue): whole-object reads and writes with polars."""

from __future__ import annotations

import io

import polars as pl

from emilia_store.base import ObjectStore


def write_parquet(store: ObjectStore, key: str, frame: pl.DataFrame) -> None:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    store.put_bytes(key, buf.getvalue())


def read_parquet(store: ObjectStore, key: str) -> pl.DataFrame:
    """Raises KeyError when the table is not in the store."""
    return pl.read_parquet(io.BytesIO(store.get_bytes(key)))
