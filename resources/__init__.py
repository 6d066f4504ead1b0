"""Dagster resources: the object store and the Emilia pipe's configuration."""

from resources.object_store import LocalStore, ObjectInfo, ObjectStore, ObjectStoreResource, S3Store

__all__ = ["LocalStore", "ObjectInfo", "ObjectStore", "ObjectStoreResource", "S3Store"]
