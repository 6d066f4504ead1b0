"""The object store as a Dagster resource: builds an `emilia_store` backend from config, nothing more."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from emilia_store import LocalStore, ObjectStore, S3Settings, S3Store


class ObjectStoreResource(dg.ConfigurableResource):
    """The platform's storage. With `bucket` empty it is a local directory (`local_root`); otherwise S3/R2 or any
    S3-compatible server (see `emilia_store.S3Settings` for the client settings).

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
    checksums: str = Field(
        default="auto",
        description="S3_CHECKSUMS: auto (AWS: when_supported; any other endpoint: when_required), when_required, "
        "when_supported. Ceph radosgw rejects botocore's default upload checksums over HTTPS.",
    )
    addressing_style: str = Field(default="auto", description="S3_ADDRESSING_STYLE: auto, path or virtual.")
    retry_mode: str = Field(default="standard", description="S3_RETRY_MODE: standard, adaptive or legacy.")
    max_attempts: int = Field(default=6, description="S3_MAX_ATTEMPTS: tries per request, the first included.")
    ca_bundle: str = Field(default="", description="S3_CA_BUNDLE: PEM file of CAs to trust (private CA).")

    def s3_settings(self) -> S3Settings:
        return S3Settings(
            endpoint_url=self.endpoint_url,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            region_name=self.region_name,
            checksums=self.checksums,
            addressing_style=self.addressing_style,
            retry_mode=self.retry_mode,
            max_attempts=self.max_attempts,
            ca_bundle=self.ca_bundle,
        )

    def open(self) -> ObjectStore:
        if not self.bucket:
            return LocalStore(self.local_root)
        return S3Store.open(self.s3_settings(), self.bucket, self.key_prefix)
