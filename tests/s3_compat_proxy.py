"""An HTTPS reverse proxy in front of moto that behaves like Ceph radosgw 16 where moto does not.

Measured on radosgw 16.2 over HTTPS, and reproduced here (moto over plain HTTP shows none of it):
- uploads that carry botocore's default checksums as an `aws-chunked` trailer are refused with 411
  `MissingContentLength` (PutObject and UploadPart), while reads and listings work;
- list pages are short (934 keys for MaxKeys=1000 with IsTruncated=true); this proxy can also answer empty pages
  marked truncated, which only the continuation token gets past;
- signatures are checked (moto checks none): a wrong secret is `SignatureDoesNotMatch` with no message text, an
  unknown key `InvalidAccessKeyId`, and a HEAD gets a bare 403.

The proxy checks AWS Signature V4 itself against its own table of keys, then forwards the request to moto. Every
request is logged (method, path, query, headers) so tests can see what reached the server.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import http.client
import ipaddress
import json
import re
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit
from xml.sax.saxutils import escape

_EMPTY_TOKEN = "proxy-empty-"
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/([^,]+), ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]+)")


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "emilia-forge test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    status: int


@dataclass
class Behaviour:
    reject_streaming_checksums: bool = True  # 411 MissingContentLength for aws-chunked / trailer uploads
    keys: dict[str, str] | None = None  # access key id -> secret; None: signatures are not checked
    short_page: Callable[[int], int] | None = None  # MaxKeys asked -> keys answered at most
    empty_pages: bool = False  # each listing not resumed from the proxy's own token gets an empty truncated page
    log: list[Seen] = field(default_factory=list)


class S3CompatProxy:
    """`url` is the endpoint; `ca_file` the CA to trust (HTTPS); `behaviour` may be changed between requests."""

    def __init__(self, upstream: str, tls_dir: Path | None, behaviour: Behaviour | None = None):
        """`tls_dir`: where to write the CA and certificate; None serves plain HTTP (botocore then sends no
        checksum trailer, like radosgw over HTTP: for the listing and signature behaviours alone)."""
        self.upstream = urlsplit(upstream)
        self.behaviour = behaviour or Behaviour()
        self.ca_file: Path | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and `Expect: 100-continue`, as botocore uses them

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                proxy._handle(self)

            do_PUT = do_POST = do_HEAD = do_DELETE = do_GET  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls_dir is not None:
            self.ca_file, cert, key = make_tls_files(tls_dir)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> S3CompatProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def log(self) -> list[Seen]:
        return self.behaviour.log

    # --- one request ------------------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        b = self.behaviour
        path, _, raw_query = h.path.partition("?")
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in h.headers.items()}
        body = self._read_body(h, headers)

        def answer(status: int, payload: bytes = b"", extra: dict[str, str] | None = None) -> None:
            with self._lock:
                b.log.append(Seen(h.command, path, query, headers, status))
            h.send_response(status)
            for k, v in (extra or {}).items():
                h.send_header(k, v)
            if "Content-Length" not in (extra or {}):  # a HEAD's is the object's, forwarded from moto
                h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(payload)

        refusal = self._auth_refusal(h.command, path, raw_query, headers) if b.keys is not None else None
        if refusal is not None:
            if h.command == "HEAD":  # no body: botocore sees a bare "403 Forbidden"
                answer(403)
            else:
                answer(403, _error_xml(refusal), {"Content-Type": "application/xml"})
            return
        streaming = (
            "x-amz-trailer" in headers
            or "aws-chunked" in headers.get("content-encoding", "")
            or headers.get("x-amz-content-sha256", "").startswith("STREAMING-")
        )
        if b.reject_streaming_checksums and streaming and h.command in ("PUT", "POST"):
            answer(411, _error_xml("MissingContentLength"), {"Content-Type": "application/xml"})
            return
        if h.command == "GET" and query.get("list-type") == "2":
            listing = self._listing(query)
            if listing is None:
                answer(200, _empty_page_xml(path.strip("/"), query), {"Content-Type": "application/xml"})
                return
            query = listing
        status, out_headers, payload = self._forward(h.command, path, query, raw_query, headers, body)
        answer(status, payload, out_headers)

    def _listing(self, query: dict[str, str]) -> dict[str, str] | None:
        """The query to send to moto, or None to answer an empty page marked truncated."""
        b = self.behaviour
        token = query.get("continuation-token", "")
        if token.startswith(_EMPTY_TOKEN):
            query = {k: v for k, v in query.items() if k not in ("continuation-token", "start-after")}
            query.update(json.loads(base64.urlsafe_b64decode(token[len(_EMPTY_TOKEN) :])))
        elif b.empty_pages:
            return None
        if b.short_page is not None:
            query["max-keys"] = str(max(1, b.short_page(int(query.get("max-keys", "1000")))))
        return query

    def _forward(
        self, method: str, path: str, query: dict[str, str], raw_query: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            qs = urlencode(query, quote_via=quote) if query else ""
            skip = {"connection", "transfer-encoding", "expect", "content-length", "keep-alive"}
            fwd = {k: v for k, v in headers.items() if k not in skip}
            fwd["content-length"] = str(len(body))
            conn.request(method, path + (f"?{qs}" if qs else ""), body=body, headers=fwd)
            resp = conn.getresponse()
            payload = resp.read()
            out = {k: v for k, v in resp.getheaders() if k.lower() not in ("connection", "transfer-encoding",
                                                                            "content-length", "server", "date")}
            if method == "HEAD":
                out["Content-Length"] = resp.getheader("Content-Length", "0")
            return resp.status, out, payload
        finally:
            conn.close()

    @staticmethod
    def _read_body(h: BaseHTTPRequestHandler, headers: dict[str, str]) -> bytes:
        if "content-length" in headers:
            return h.rfile.read(int(headers["content-length"]))
        if "chunked" in headers.get("transfer-encoding", ""):
            out = b""
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return out
                out += h.rfile.read(size)
                h.rfile.readline()
        return b""

    def _auth_refusal(self, method: str, path: str, raw_query: str, headers: dict[str, str]) -> str | None:
        """None when the request is signed with a known key and its secret, else the S3 error code."""
        keys = self.behaviour.keys or {}
        m = _AUTH.fullmatch(headers.get("authorization", "").strip())
        if m is None:
            return "AccessDenied"
        key_id, scope_rest, signed, signature = m.groups()
        if key_id not in keys:
            return "InvalidAccessKeyId"
        date, region, service, _ = scope_rest.split("/")
        pairs = sorted(
            (quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~"))
            for k, _, v in (part.partition("=") for part in raw_query.split("&") if part)
        )
        canonical = "\n".join(
            [
                method,
                path,
                "&".join(f"{k}={v}" for k, v in pairs),
                "".join(f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed.split(";")),
                signed,
                headers.get("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
            ]
        )
        scope = f"{date}/{region}/{service}/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", headers.get("x-amz-date", ""), scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        k = ("AWS4" + keys[key_id]).encode()
        for part in (date, region, service, "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        return None if hmac.compare_digest(expected, signature) else "SignatureDoesNotMatch"


def _error_xml(code: str) -> bytes:
    # radosgw's errors carry no <Message>: botocore then prints "... (SignatureDoesNotMatch) ...: None"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<RequestId>tx000000000000000000001-proxy</RequestId><HostId>proxy</HostId></Error>"
    ).encode()


def _empty_page_xml(bucket: str, query: dict[str, str]) -> bytes:
    resume = {k: query[k] for k in ("continuation-token", "start-after") if k in query}
    token = _EMPTY_TOKEN + base64.urlsafe_b64encode(json.dumps(resume).encode()).decode()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>{escape(bucket)}</Name><Prefix>{escape(query.get('prefix', ''))}</Prefix>"
        f"<MaxKeys>{escape(query.get('max-keys', '1000'))}</MaxKeys><KeyCount>0</KeyCount>"
        f"<IsTruncated>true</IsTruncated><NextContinuationToken>{escape(token)}</NextContinuationToken>"
        "</ListBucketResult>"
    ).encode()
