"""The store the environment names, for tools without Dagster (`emilia-forge run-batch`): the same variables as the
code locations (`R2_BUCKET` set: S3/R2 with `R2_ENDPOINT_URL`, `R2_ACCESS_KEY_ID`, `R2_SECRET_ACCESS_KEY`,
`R2_REGION`, `R2_KEY_PREFIX` and the `S3_*` client settings; unset: the local folder `EMILIA_LOCAL_STORE`, default
./data). The code locations read the same names, the secrets through `dg.EnvVar`."""

from __future__ import annotations

import os
from collections.abc import Mapping

from emilia_store.base import ObjectStore
from emilia_store.local import LocalStore
from emilia_store.s3 import S3Settings, S3Store


def s3_settings_from_env(env: Mapping[str, str]) -> S3Settings:
    return S3Settings(
        endpoint_url=env.get("R2_ENDPOINT_URL") or "",
        access_key_id=env.get("R2_ACCESS_KEY_ID") or "",
        secret_access_key=env.get("R2_SECRET_ACCESS_KEY") or "",
        region_name=env.get("R2_REGION") or "auto",
        checksums=env.get("S3_CHECKSUMS") or "auto",
        addressing_style=env.get("S3_ADDRESSING_STYLE") or "auto",
        retry_mode=env.get("S3_RETRY_MODE") or "standard",
        max_attempts=int(env.get("S3_MAX_ATTEMPTS") or 6),
        ca_bundle=env.get("S3_CA_BUNDLE") or "",
    )


def store_from_env(environ: Mapping[str, str] | None = None) -> ObjectStore:
    env = os.environ if environ is None else environ
    bucket = env.get("R2_BUCKET")
    if not bucket:
        return LocalStore(env.get("EMILIA_LOCAL_STORE") or "data")
    return S3Store.open(s3_settings_from_env(env), bucket, env.get("R2_KEY_PREFIX") or "")
