"""S3, R2 or any S3-compatible server (Ceph radosgw, MinIO), through a boto3 client this module builds.

The client is built here, not by dagster-aws, because S3-compatible servers need botocore settings that
dagster-aws's `S3Resource` cannot pass (see `S3Settings`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from emilia_pipe.keys import join
from emilia_store.base import ListPage, ObjectInfo, PreconditionFailed, StoreAuthError

CHECKSUM_CHOICES = ("auto", "when_required", "when_supported")
ADDRESSING_CHOICES = ("auto", "path", "virtual")
RETRY_MODES = ("standard", "adaptive", "legacy")

# What a reader (a browser, `aws s3 cp`, the Hub's viewer) sees as the object's type; botocore's default is
# `binary/octet-stream` for everything. Fixed here rather than taken from `mimetypes`, which depends on the host.
CONTENT_TYPES = {
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".mp4": "audio/mp4",  # raw audio downloaded from video sites: the audio track only
    ".aac": "audio/aac",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",  # Opus files are Ogg streams
    ".webm": "audio/webm",
    ".mka": "audio/x-matroska",
    ".wma": "audio/x-ms-wma",
    ".aiff": "audio/aiff",
    ".json": "application/json",
    ".parquet": "application/vnd.apache.parquet",
    ".tar": "application/x-tar",
    ".png": "image/png",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# Error codes S3-compatible servers use when the credentials are wrong or do not allow the request. A bare 403 (HEAD
# has no body) arrives as code "403".
_AUTH_CODES = frozenset(
    {
        "401",
        "403",
        "AccessDenied",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "Forbidden",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "Unauthorized",
    }
)


def content_type_for(key: str) -> str:
    return CONTENT_TYPES.get(PurePosixPath(key).suffix.lower(), DEFAULT_CONTENT_TYPE)


def is_aws_endpoint(endpoint_url: str) -> bool:
    """True for AWS itself: no endpoint URL (boto3 picks AWS's), or a host under amazonaws.com(.cn)."""
    if not endpoint_url:
        return True
    host = (urlsplit(endpoint_url).hostname or "").lower()
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))


@dataclass(frozen=True)
class S3Settings:
    """How to reach the bucket's server, with the botocore settings S3-compatible servers need.

    `checksums`: botocore (since 1.36) sends a CRC checksum with every upload, as an `aws-chunked` trailer over
    HTTPS. Ceph radosgw 16 (and other S3-compatible servers) reject those writes with `MissingContentLength`, while
    reads and listings work, so a deployment looks healthy until its first write. "auto" (the default) keeps
    botocore's behaviour on AWS and asks for checksums only when an operation requires them ("when_required") on
    any other endpoint; "when_required" or "when_supported" force one or the other.
    `addressing_style`: "path" (`https://host/bucket/key`) for servers without wildcard DNS for buckets; "virtual"
    (`https://bucket.host/key`); "auto" lets botocore choose (path style for a custom endpoint).
    `retry_mode`/`max_attempts`: botocore's retries of throttling, 5xx and connection errors; "adaptive" also
    rate-limits the client when the server throttles. `max_attempts` counts the first try (6: five retries).
    `ca_bundle`: a PEM file of certificate authorities to trust, for a server behind a private CA; empty uses the
    system's (certifi's) bundle. Certificates are always verified.
    """

    endpoint_url: str = ""
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    region_name: str = ""
    checksums: str = "auto"
    addressing_style: str = "auto"
    retry_mode: str = "standard"
    max_attempts: int = 6
    ca_bundle: str = ""

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("checksums", self.checksums, CHECKSUM_CHOICES),
            ("addressing_style", self.addressing_style, ADDRESSING_CHOICES),
            ("retry_mode", self.retry_mode, RETRY_MODES),
        ):
            if value not in choices:
                raise ValueError(f"S3 setting {name}={value!r} is not one of {', '.join(choices)}")
        if self.max_attempts < 1:
            raise ValueError(f"S3 setting max_attempts={self.max_attempts} must be at least 1 (the first try)")
        if self.ca_bundle and not Path(self.ca_bundle).is_file():
            raise ValueError(f"S3 setting ca_bundle={self.ca_bundle!r} is not a file")

    def checksum_calculation(self) -> str:
        """botocore's `request_checksum_calculation` / `response_checksum_validation` for this endpoint."""
        if self.checksums != "auto":
            return self.checksums
        return "when_supported" if is_aws_endpoint(self.endpoint_url) else "when_required"

    def client_config(self) -> Any:
        from botocore.config import Config

        checksums = self.checksum_calculation()
        return Config(
            request_checksum_calculation=checksums,
            response_checksum_validation=checksums,
            s3={"addressing_style": self.addressing_style},
            # botocore's `max_attempts` counts retries only; `total_max_attempts` counts the first try too
            retries={"mode": self.retry_mode, "total_max_attempts": self.max_attempts},
        )

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url or None,
            aws_access_key_id=self.access_key_id or None,
            aws_secret_access_key=self.secret_access_key or None,
            region_name=self.region_name or None,
            verify=self.ca_bundle or None,
            config=self.client_config(),
        )


class S3Store:
    """S3, R2 or an S3-compatible server through a boto3 client (`S3Store.open` builds one from `S3Settings`)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", access_key_id: str | None = None):
        from boto3.s3.transfer import TransferConfig

        self.client = client
        self.bucket = bucket
        self.prefix = join(prefix) + "/" if prefix.strip("/") else ""
        self.access_key_id = access_key_id if access_key_id is not None else _client_access_key_id(client)
        # boto3 switches to multipart above the threshold and retries parts on its own.
        self.transfer = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20)

    @classmethod
    def open(cls, settings: S3Settings, bucket: str, prefix: str = "") -> S3Store:
        return cls(settings.client(), bucket, prefix, access_key_id=settings.access_key_id)

    @property
    def endpoint(self) -> str:
        return getattr(self.client.meta, "endpoint_url", "") or ""

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} ({self.endpoint})"

    def _k(self, key: str) -> str:
        return self.prefix + join(key)

    @contextmanager
    def _errors(self, operation: str, key: str) -> Iterator[None]:
        """Authentication and permission failures become one `StoreAuthError` that says where and as whom."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import ClientError

        try:
            yield
        except (ClientError, S3UploadFailedError) as err:
            # boto3's transfers wrap the ClientError of the failed request in S3UploadFailedError
            client_error = err if isinstance(err, ClientError) else err.__context__
            if isinstance(client_error, ClientError) and _is_auth_error(client_error):
                raise StoreAuthError(self._auth_message(operation, key, client_error)) from None
            raise

    def _auth_message(self, operation: str, key: str, err: Any) -> str:
        info = err.response.get("Error", {})
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(info.get("Code") or "")
        said = info.get("Message")
        # radosgw sends no message (botocore shows "None"), and a refused HEAD has no body: only the status
        detail = f"HTTP {status}" + (f" {code}" if code and code != str(status) else "")
        detail += f" ({said})" if said and said not in ("None", "Unknown") else ""
        causes = {
            "SignatureDoesNotMatch": "the secret does not belong to this access key id",
            "InvalidAccessKeyId": "the server does not know this access key id",
            "AccessDenied": f"the key may not {operation} in this bucket",
        }
        cause = causes.get(
            code,
            "the secret does not match the access key id, the key is unknown or disabled, "
            f"or it may not {operation} in this bucket",
        )
        return (
            f"the object store refused {operation} of {key!r} in bucket {self.bucket!r} at {self.endpoint or 'AWS'} "
            f"with access key id {self.access_key_id or '(none)'!r}: {detail}. Likely {cause}; check "
            f"R2_ACCESS_KEY_ID/R2_SECRET_ACCESS_KEY (or the resource's credentials) and the key's permissions."
        )

    def list_page(
        self, prefix: str, start_after: str | None = None, max_keys: int = 1000, token: str | None = None
    ) -> ListPage:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix, "MaxKeys": max_keys}
        if token is not None:
            kwargs["ContinuationToken"] = token  # S3 resumes where the previous page stopped; StartAfter is moot
        elif start_after is not None:
            kwargs["StartAfter"] = self.prefix + start_after
        with self._errors("ListObjectsV2", self.prefix + prefix):
            resp = self.client.list_objects_v2(**kwargs)
        n = len(self.prefix)
        objects = [
            ObjectInfo(o["Key"][n:], int(o["Size"]), o["LastModified"].timestamp(), o.get("ETag", "").strip('"'))
            for o in resp.get("Contents", [])
        ]
        truncated = bool(resp.get("IsTruncated"))
        return ListPage(objects, truncated, resp.get("NextContinuationToken") if truncated else None)

    def get_bytes(self, key: str) -> bytes:
        try:
            with self._errors("GetObject", self._k(key)):
                return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise KeyError(key) from None

    def head(self, key: str) -> ObjectInfo:
        from botocore.exceptions import ClientError

        try:
            with self._errors("HeadObject", self._k(key)):
                resp = self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise KeyError(key) from None
            raise
        return ObjectInfo(join(key), int(resp["ContentLength"]), resp["LastModified"].timestamp(),
                          resp.get("ETag", "").strip('"'))

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        try:
            with self._errors("GetObject", self._k(key)):
                resp = self.client.get_object(Bucket=self.bucket, Key=self._k(key))
        except self.client.exceptions.NoSuchKey:
            raise KeyError(key) from None
        return resp["Body"].read(), resp["ETag"]

    def put_if(self, key: str, data: bytes, token: str | None) -> str:
        """A conditional PUT: `If-Match: <ETag>`, or `If-None-Match: *` to create. S3, R2 and MinIO honour both; a
        server that ignores them makes this a plain PUT, which is why the release writer also re-reads what it wrote."""
        from botocore.exceptions import ClientError

        k = self._k(key)
        condition = {"IfMatch": token} if token is not None else {"IfNoneMatch": "*"}
        try:
            with self._errors("PutObject", k):
                resp = self.client.put_object(Bucket=self.bucket, Key=k, Body=data, ContentType=content_type_for(k),
                                              **condition)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or status in (409, 412):
                raise PreconditionFailed(f"{self.describe()}: {key} changed since it was read ({code or status})") \
                    from None
            raise
        return resp["ETag"]

    def put_bytes(self, key: str, data: bytes) -> None:
        k = self._k(key)
        with self._errors("PutObject", k):
            self.client.put_object(Bucket=self.bucket, Key=k, Body=data, ContentType=content_type_for(k))

    def get_file(self, key: str, path: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            with self._errors("GetObject", self._k(key)):
                self.client.download_file(self.bucket, self._k(key), str(path), Config=self.transfer)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise KeyError(key) from None
            raise

    def put_file(self, path: Path, key: str) -> None:
        k = self._k(key)
        with self._errors("PutObject", k):
            self.client.upload_file(
                str(path), self.bucket, k, ExtraArgs={"ContentType": content_type_for(k)}, Config=self.transfer
            )

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            with self._errors("HeadObject", self._k(key)):
                self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        with self._errors("DeleteObject", self._k(key)):
            self.client.delete_object(Bucket=self.bucket, Key=self._k(key))


def _is_auth_error(err: Any) -> bool:
    code = str(err.response.get("Error", {}).get("Code", ""))
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _AUTH_CODES or status in (401, 403)


def _client_access_key_id(client: Any) -> str:
    """The access key id a client signs with (for error messages), for clients built elsewhere; never the secret."""
    try:
        credentials = client._request_signer._credentials
        return credentials.access_key if credentials is not None else ""
    except AttributeError:
        return ""
