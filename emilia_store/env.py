"""The store the environment names, for tools without Dagster (`emilia-forge run-batch`): the same variables as the
code location (`R2_BUCKET` set: S3/R2 with `R2_ENDPOINT_URL`, `R2_ACCESS_KEY_ID`, `R2_SECRET_ACCESS_KEY`, `R2_REGION`,
`R2_KEY_PREFIX`; unset: the local folder `EMILIA_LOCAL_STORE`, default ./data)."""

from __future__ import annotations

import os

from emilia_store.base import ObjectStore
from emilia_store.local import LocalStore
from emilia_store.s3 import S3Store


def store_from_env(environ: dict[str, str] | None = None) -> ObjectStore:
    env = os.environ if environ is None else environ
    bucket = env.get("R2_BUCKET")
    if not bucket:
        return LocalStore(env.get("EMILIA_LOCAL_STORE") or "data")
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=env.get("R2_ENDPOINT_URL") or None,
        aws_access_key_id=env.get("R2_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env.get("R2_SECRET_ACCESS_KEY") or None,
        region_name=env.get("R2_REGION") or "auto",
    )
    return S3Store(client, bucket, env.get("R2_KEY_PREFIX") or "")
