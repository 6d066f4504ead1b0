"""The object store: one interface, a local-directory backend (the embedded default) and an S3/R2 backend.

No Dagster import here or below: the cores (`emilia_pipe`, `emilia_sources`, `emilia_publish`) use it directly, and
`resources.object_store.ObjectStoreResource` only builds one from config.
"""

from emilia_store.base import (
    ListPage,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    StoreAuthError,
    cached_copy,
    delete_prefix,
    iter_objects,
    next_position,
)
from emilia_store.local import LocalStore
from emilia_store.s3 import S3Settings, S3Store
from emilia_store.tables import read_parquet, write_parquet

__all__ = [
    "ListPage",
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "PreconditionFailed",
    "S3Settings",
    "S3Store",
    "StoreAuthError",
    "cached_copy",
    "delete_prefix",
    "iter_objects",
    "next_position",
    "read_parquet",
    "write_parquet",
]
