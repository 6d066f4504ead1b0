"""The object store as a Dagster resource: builds an `emilia_store` backend from config, nothing more."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from emilia_store import LocalStore, ObjectStore, S3Store


class ObjectStoreResource(dg.ConfigurableResource):
    """The platform's storage. With `bucket` empty it is a local directory (`local_root`); otherwise S3/R2.

    Credentials are read from the environment through `dg.EnvVar` in `definitions.py`, so they never appear in run
    config shown in the UI or in metadata.
    """

    local_root: str = Field(default="data", description="Directory of the local store (used when bucket is empty).")
    bucket: str = Field(default="", description="S3/R2 bucket (R2_BUCKET); empty selects the local store.")
    endpoint_url: str = Field(default="", description="R2_ENDPOINT_URL; empty for AWS S3.")
    access_key_id: str = Field(default="", description="R2_ACCESS_KEY_ID")
    secret_access_key: str = Field(default="", description="R2_SECRET_ACCESS_KEY")
    region_name: str = Field(default="auto", description="'auto' for R2; an AWS region for S3.")
    key_prefix: str = Field(default="", description="Prefix inside the bucket under which the layout lives.")
    raw_prefix: str = Field(default="raw_audio/", description="RAW_AUDIO_PREFIX: where raw episodes land.")
    processed_prefix: str = Field(default="processed/", description="PROCESSED_PREFIX: where segments go.")

    def open(self) -> ObjectStore:
        if not self.bucket:
            return LocalStore(self.local_root)
        from dagster_aws.s3 import S3Resource

        s3 = S3Resource(
            endpoint_url=self.endpoint_url or None,
            aws_access_key_id=self.access_key_id or None,
            aws_secret_access_key=self.secret_access_key or None,
            region_name=self.region_name or None,
            max_attempts=5,
        )
        return S3Store(s3.get_client(), self.bucket, self.key_prefix)


