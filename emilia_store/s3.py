"""S3, R2 or any S3-compatible server, through a boto3 client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emilia_pipe.keys import join
from emilia_store.base import ListPage, ObjectInfo


class S3Store:
    """S3 or R2 through a boto3 client (production builds it with dagster-aws's S3Resource)."""

    def __init__(self, client: Any, bucket: str, prefix: str = ""):
        from boto3.s3.transfer import TransferConfig

        self.client = client
        self.bucket = bucket
        self.prefix = join(prefix) + "/" if prefix.strip("/") else ""
        # boto3 switches to multipart above the threshold and retries parts on its own.
        self.transfer = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20)

    def describe(self) -> str:
        endpoint = getattr(self.client.meta, "endpoint_url", "")
        return f"s3://{self.bucket}/{self.prefix} ({endpoint})"

    def _k(self, key: str) -> str:
        return self.prefix + join(key)

    def list_page(self, prefix: str, start_after: str | None = None, max_keys: int = 1000) -> ListPage:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix, "MaxKeys": max_keys}
        if start_after is not None:
            kwargs["StartAfter"] = self.prefix + start_after
        resp = self.client.list_objects_v2(**kwargs)
        n = len(self.prefix)
        objects = [
            ObjectInfo(o["Key"][n:], int(o["Size"]), o["LastModified"].timestamp())
            for o in resp.get("Contents", [])
        ]
        return ListPage(objects, bool(resp.get("IsTruncated")))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise KeyError(key) from None

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)

    def get_file(self, key: str, path: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.download_file(self.bucket, self._k(key), str(path), Config=self.transfer)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise KeyError(key) from None
            raise

    def put_file(self, path: Path, key: str) -> None:
        self.client.upload_file(str(path), self.bucket, self._k(key), Config=self.transfer)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._k(key))
