"""The downloader against a real (misbehaving) HTTP server on 127.0.0.1: resume, retries, caps, "is it audio"."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import emilia_sources.download as dl
from emilia_sources.download import DownloadError, HostThrottle, download, sniff

ALLOW = "INGEST_ALLOW_HOSTS"

if TYPE_CHECKING:
    from tests.http_fixture import HTTPFixture

pytest_plugins = ["tests.http_fixture"]  # the `http_server` fixture

MP3 = (Path(__file__).resolve().parents[2] / "samples" / "monologue.mp3").read_bytes()
HTML = b"<!DOCTYPE html><html><head><title>Not found</title></head><body>Sorry! " + b"x" * 200 + b"</body></html>"
FAST = {"backoff_s": 0.01, "max_bytes": 10 * 2**20}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def nothing_left(dest: Path) -> bool:
    return not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_downloads_complete_file_with_extension_from_magic(http_server: HTTPFixture, tmp_path: Path) -> None:
    url = http_server.route("/download", MP3, "audio/mpeg; charset=binary")  # no extension in the URL
    got = download(url + "?id=3&fmt=.wav", tmp_path / "ep", **FAST)
    assert got.path == tmp_path / "ep" and got.ext == "mp3" and got.bytes == len(MP3)
    assert got.content_type == "audio/mpeg" and got.final_url.startswith(url)
    assert sha(got.path.read_bytes()) == sha(MP3)
    assert not (tmp_path / "ep.part").exists()


@pytest.mark.parametrize(
    ("head", "ext"),
    [
        (b"ID3\x04\x00" + bytes(59), "mp3"),
        (b"\xff\xfb\x90\x64" + bytes(60), "mp3"),
        (b"\xff\xf1\x50\x80" + bytes(60), "aac"),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00" + bytes(48), "m4a"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00" + bytes(48), "mp4"),
        (b"OggS\x00\x02" + bytes(22) + b"\x01\x13OpusHead" + bytes(26), "opus"),
        (b"OggS\x00\x02" + bytes(22) + b"\x01vorbis" + bytes(28), "ogg"),
        (b"RIFF\x24\x08\x00\x00WAVEfmt " + bytes(48), "wav"),
        (b"fLaC\x00\x00\x00\x22" + bytes(56), "flac"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81" + bytes(56), "webm"),
        (HTML[:64], None),
        (b'{"error": "gone"}', None),
        (b"RIFF\x24\x08\x00\x00AVI LIST" + bytes(48), None),
    ],
)
def test_sniff(head: bytes, ext: str | None) -> None:
    assert sniff(head) == ext


def test_connection_dropped_halfway_resumes_with_range(http_server: HTTPFixture, tmp_path: Path) -> None:
    url = http_server.route("/drop.mp3", MP3, "audio/mpeg", drop_first=1)
    got = download(url, tmp_path / "ep", **FAST)
    assert sha(got.path.read_bytes()) == sha(MP3)
    first, second = http_server.log("/drop.mp3")
    assert "range" not in first.headers
    offset = int(second.headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset < len(MP3)  # continued, not restarted
    assert second.headers.get("if-range")  # and only if the file is still the same one


def test_connection_dropped_without_range_support_restarts(http_server: HTTPFixture, tmp_path: Path) -> None:
    url = http_server.route("/drop.mp3", MP3, "audio/mpeg", drop_first=2, ranges=False)
    got = download(url, tmp_path / "ep", **FAST)
    assert sha(got.path.read_bytes()) == sha(MP3) and got.bytes == len(MP3)
    assert http_server.hits("/drop.mp3") == 3


def test_drop_on_every_attempt_gives_up_and_leaves_nothing(http_server: HTTPFixture, tmp_path: Path) -> None:
    url = http_server.route("/drop.mp3", MP3, "audio/mpeg", drop_first=99, ranges=False)
    with pytest.raises(DownloadError, match="gave up after 3 attempts"):
        download(url, tmp_path / "ep", retries=2, **FAST)
    assert nothing_left(tmp_path / "ep")


def test_503_then_200_is_retried(http_server: HTTPFixture, tmp_path: Path) -> None:
    url = http_server.route("/busy.mp3", MP3, "audio/mpeg", fail_first=2)
    got = download(url, tmp_path / "ep", **FAST)
    assert got.bytes == len(MP3) and http_server.hits("/busy.mp3") == 3


def test_retry_after_is_honoured(http_server: HTTPFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(dl.time, "sleep", waits.append)
    url = http_server.route("/slow.mp3", MP3, "audio/mpeg", fail_first=1, fail_status=429, retry_after="7")
    download(url, tmp_path / "ep", **FAST)
    assert waits == [7.0]


def test_backoff_grows_exponentially(http_server: HTTPFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(dl.time, "sleep", waits.append)
    url = http_server.route("/down.mp3", MP3, "audio/mpeg", fail_first=99, retry_after=None)
    with pytest.raises(DownloadError, match=r"HTTP 503.*gave up after 4 attempts"):
        download(url, tmp_path / "ep", retries=3, backoff_s=0.5, max_bytes=2**20)
    assert waits == [0.5, 1.0, 2.0]
    assert nothing_left(tmp_path / "ep")


def test_retry_after_beyond_patience_fails_at_once(http_server: HTTPFixture, tmp_path: Path) -> None:
    url = http_server.route("/later.mp3", MP3, "audio/mpeg", fail_first=99, fail_status=429, retry_after="86400")
    with pytest.raises(DownloadError, match="retry after 86400 s"):
        download(url, tmp_path / "ep", **FAST)
    assert http_server.hits("/later.mp3") == 1


def test_404_is_final(http_server: HTTPFixture, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download(http_server.url("/gone.mp3"), tmp_path / "ep", **FAST)
    assert err.value.url.endswith("/gone.mp3")
    assert http_server.hits("/gone.mp3") == 1
    assert nothing_left(tmp_path / "ep")


def test_redirect_loop(http_server: HTTPFixture, tmp_path: Path) -> None:
    http_server.route("/a", redirect_to="/b")
    http_server.route("/b", redirect_to="/a")
    with pytest.raises(DownloadError, match="redirect") as err:
        download(http_server.url("/a"), tmp_path / "ep", **FAST)
    assert "more than 10" in err.value.reason
    assert http_server.hits("/a", "/b") == 11  # the first request and 10 redirects, never retried
    assert nothing_left(tmp_path / "ep")


def test_redirect_is_followed(http_server: HTTPFixture, tmp_path: Path) -> None:
    http_server.route("/track/ep1", redirect_to="/cdn/ep1.mp3")
    http_server.route("/cdn/ep1.mp3", MP3, "audio/mpeg")
    got = download(http_server.url("/track/ep1"), tmp_path / "ep", **FAST)
    assert got.final_url == http_server.url("/cdn/ep1.mp3") and got.bytes == len(MP3)


def test_content_length_over_cap_is_refused_before_download(http_server: HTTPFixture, tmp_path: Path) -> None:
    url = http_server.route("/huge.mp3", MP3, "audio/mpeg", announce_length=5 * 2**30)
    with pytest.raises(DownloadError, match=r"too large: 5.00 GiB announced, the cap is 10.0 MiB"):
        download(url, tmp_path / "ep", **FAST)
    assert http_server.hits("/huge.mp3") == 1  # a refusal is final
    assert nothing_left(tmp_path / "ep")


def test_stream_past_the_cap_is_refused(http_server: HTTPFixture, tmp_path: Path) -> None:
    url = http_server.route("/endless.mp3", MP3, "audio/mpeg", send_length=False)  # no Content-Length at all
    with pytest.raises(DownloadError, match="went past the cap of 100.0 KiB"):
        download(url, tmp_path / "ep", max_bytes=100 * 1024, backoff_s=0.01)
    assert nothing_left(tmp_path / "ep")


def test_html_content_type_is_not_audio(http_server: HTTPFixture, tmp_path: Path) -> None:
    url = http_server.route("/ep.mp3", HTML, "text/html; charset=utf-8")
    with pytest.raises(DownloadError, match="not audio: server sent Content-Type 'text/html'"):
        download(url, tmp_path / "ep", **FAST)
    assert nothing_left(tmp_path / "ep")


@pytest.mark.parametrize("body", [HTML, b"<html>404</html>"], ids=["page", "shorter-than-magic"])
def test_html_served_as_audio_mpeg_is_not_audio(http_server: HTTPFixture, tmp_path: Path, body: bytes) -> None:
    url = http_server.route("/ep.mp3", body, "audio/mpeg")
    with pytest.raises(DownloadError, match="not audio: content starts with"):
        download(url, tmp_path / "ep", **FAST)
    assert nothing_left(tmp_path / "ep")


def test_failure_leaves_an_existing_dest_alone(http_server: HTTPFixture, tmp_path: Path) -> None:
    (tmp_path / "ep").write_bytes(b"earlier")
    with pytest.raises(DownloadError):
        download(http_server.url("/gone.mp3"), tmp_path / "ep", **FAST)
    assert (tmp_path / "ep").read_bytes() == b"earlier"


def test_feed_accepts_xml_and_refuses_html(http_server: HTTPFixture, tmp_path: Path) -> None:
    xml = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'
    got = download(http_server.route("/feed", xml, "application/rss+xml"), tmp_path / "f", accept="feed", **FAST)
    assert got.ext == "xml" and got.path.read_bytes() == xml
    got = download(http_server.route("/feed2", xml, "text/plain"), tmp_path / "f2", accept="feed", **FAST)
    assert got.bytes == len(xml)
    with pytest.raises(DownloadError, match="not a feed"):
        download(http_server.route("/feed3", HTML, "text/html"), tmp_path / "f3", accept="feed", **FAST)
    with pytest.raises(DownloadError, match="not a feed: content starts with"):
        download(http_server.route("/feed4", HTML, "application/xml"), tmp_path / "f4", accept="feed", **FAST)
    with pytest.raises(DownloadError, match="not audio"):  # and a feed is not an episode
        download(http_server.url("/feed"), tmp_path / "f5", **FAST)


def test_connection_refused_is_retried_then_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setenv("INGEST_ALLOW_HOSTS", "127.0.0.1")
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="connection failed.*gave up after 2 attempts"):
        download(f"http://127.0.0.1:{port}/ep.mp3", tmp_path / "ep", retries=1, **FAST)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/a.mp3", "/relative.mp3"])
def test_only_http_urls(url: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="unsupported URL scheme"):
        download(url, tmp_path / "ep", **FAST)


def test_host_throttle_spaces_requests_per_host() -> None:
    throttle = HostThrottle(0.05)
    starts: list[float] = []
    lock = threading.Lock()

    def go() -> None:
        throttle.wait("http://podcasts.example.org/a.mp3")
        with lock:
            starts.append(time.monotonic())

    threads = [threading.Thread(target=go) for _ in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    starts.sort()
    # sleeping never ends early, so the i-th request cannot start before i intervals (a late wake-up only adds)
    assert all(start - t0 >= i * 0.05 - 0.005 for i, start in enumerate(starts))
    assert throttle.wait("http://other.example.org/feed") == 0.0  # another host does not wait
    assert throttle.wait("https://PODCASTS.example.org:443/b.mp3") > 0  # the same host, however it is spelled


def test_throttle_is_used_for_every_attempt(http_server: HTTPFixture, tmp_path: Path) -> None:
    calls: list[str] = []

    class Counting(HostThrottle):
        def wait(self, url: str) -> float:
            calls.append(url)
            return super().wait(url)

    url = http_server.route("/busy.mp3", MP3, "audio/mpeg", fail_first=1)
    download(url, tmp_path / "ep", throttle=Counting(0.0), **FAST)
    assert calls == [url, url]


def test_a_drop_reports_and_resumes_from_the_bytes_that_arrived(http_server: HTTPFixture, tmp_path: Path) -> None:
    body = MP3[:40_000]  # shorter than one read chunk: the half that arrives is never a whole chunk
    dropped = http_server.route("/short-drop.mp3", body, "audio/mpeg", drop_first=99, ranges=False)
    with pytest.raises(DownloadError, match=r"connection dropped at 19\.5 KiB: .*gave up after 1 attempts"):
        download(dropped, tmp_path / "ep", retries=0, **FAST)

    resumed = http_server.route("/short-resume.mp3", body, "audio/mpeg", drop_first=1)
    got = download(resumed, tmp_path / "ep2", **FAST)
    assert sha(got.path.read_bytes()) == sha(body)
    assert http_server.log("/short-resume.mp3")[1].headers["range"] == "bytes=20000-"  # exactly what had arrived


# --- the address guard: only public destinations unless INGEST_ALLOW_HOSTS says otherwise ---------------------------


def test_loopback_is_refused_without_the_allow_setting(
    http_server: HTTPFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOW)
    url = http_server.route("/ep.mp3", MP3, "audio/mpeg")
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "ep", **FAST)
    assert err.value.reason == f"refused: 127.0.0.1 is a loopback address (set {ALLOW} to allow it)"
    assert http_server.hits("/ep.mp3") == 0 and nothing_left(tmp_path / "ep")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://10.1.2.3/ep.mp3", "10.1.2.3 is a private address"),
        ("http://[::ffff:127.0.0.1]/ep.mp3", "::ffff:127.0.0.1 is an IPv4-mapped loopback address"),
        ("http://[::1]:9/ep.mp3", "::1 is a loopback address"),
        ("http://0.0.0.0/ep.mp3", "0.0.0.0 is an unspecified address"),
        ("https://100.64.0.7/ep.mp3", "100.64.0.7 is a non-public address"),
        ("http://2130706433/ep.mp3", "2130706433 resolves to 127.0.0.1, a loopback address"),
    ],
)
def test_non_public_addresses_are_refused_before_any_connection(
    url: str, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOW, raising=False)
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "ep", retries=0, timeout_s=0.5, **FAST)
    assert err.value.reason == f"refused: {reason} (set {ALLOW} to allow it)"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.251", "multicast"),
        ("240.0.0.1", "reserved"),
        ("::ffff:169.254.169.254", "IPv4-mapped link-local"),
        ("64:ff9b::a9fe:a9fe", "IPv4-mapped link-local"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", "IPv4-mapped loopback"),  # 6to4 of 127.0.0.1
        ("192.0.2.10", "private"),  # documentation range: never on the internet
    ],
)
def test_address_kinds(address: str, kind: str | None) -> None:
    from emilia_sources.address_guard import _parse_ip, non_public_kind

    assert non_public_kind(_parse_ip(address)) == kind


def test_a_name_that_resolves_to_loopback_is_refused(
    http_server: HTTPFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOW)
    http_server.route("/ep.mp3", MP3, "audio/mpeg")
    with pytest.raises(DownloadError, match=r"refused: localhost resolves to (127\.0\.0\.1|::1), a loopback address"):
        download(f"http://localhost:{http_server.port}/ep.mp3", tmp_path / "ep", **FAST)
    assert http_server.hits("/ep.mp3") == 0


def test_a_redirect_to_the_metadata_address_is_refused_at_the_hop(
    http_server: HTTPFixture, tmp_path: Path
) -> None:
    url = http_server.route("/track/ep1", redirect_to="http://169.254.169.254/latest/meta-data/iam/")
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "ep", retries=0, timeout_s=0.5, **FAST)
    assert err.value.reason == (
        "refused: redirect to http://169.254.169.254/latest/meta-data/iam/: 169.254.169.254 is a link-local address "
        f"(set {ALLOW} to allow it)"
    )
    assert http_server.hits("/track/ep1") == 1  # never retried: a refusal is final


def test_an_allowed_name_redirecting_to_loopback_is_refused_at_the_hop(
    http_server: HTTPFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ALLOW, "localhost")  # the name is allowed, the address it redirects to is not
    http_server.route("/track/ep1", redirect_to="/cdn/ep1.mp3")  # Location: http://127.0.0.1:<port>/cdn/ep1.mp3
    http_server.route("/cdn/ep1.mp3", MP3, "audio/mpeg")
    with pytest.raises(DownloadError) as err:
        download(f"http://localhost:{http_server.port}/track/ep1", tmp_path / "ep", **FAST)
    assert err.value.reason.startswith(
        f"refused: redirect to {http_server.url('/cdn/ep1.mp3')}: 127.0.0.1 is a loopback address"
    )
    assert http_server.hits("/track/ep1") == 1 and http_server.hits("/cdn/ep1.mp3") == 0


def test_a_public_looking_host_is_checked_on_the_address_it_resolves_to(
    http_server: HTTPFixture, tmp_path: Path
) -> None:
    """The resolver hook stands in for DNS: the check and the connection use the same answer (no rebinding gap)."""
    from emilia_sources.address_guard import AddressPolicy

    http_server.route("/cdn/ep1.mp3", MP3, "audio/mpeg")
    http_server.route("/track/ep1", redirect_to="/cdn/ep1.mp3")
    answers = {"podcasts.example.org": ["127.0.0.1"], "mixed.example.org": ["93.184.215.14", "127.0.0.1"]}

    def resolver(host: str, port: int) -> list[str]:
        return answers.get(host, [host])

    public_url = f"http://podcasts.example.org:{http_server.port}"
    with pytest.raises(DownloadError, match="refused: podcasts.example.org resolves to 127.0.0.1, a loopback"):
        download(f"{public_url}/cdn/ep1.mp3", tmp_path / "ep", policy=AddressPolicy(resolver=resolver), **FAST)
    with pytest.raises(DownloadError, match="refused: mixed.example.org resolves to 127.0.0.1"):  # every address
        download(f"http://mixed.example.org:{http_server.port}/cdn/ep1.mp3", tmp_path / "ep",
                 policy=AddressPolicy.parse(["93.184.215.14"], resolver=resolver), **FAST)
    allowed = AddressPolicy.parse(["podcasts.example.org"], resolver=resolver)
    with pytest.raises(DownloadError, match="refused: redirect to http://127.0.0.1:"):
        download(f"{public_url}/track/ep1", tmp_path / "ep", policy=allowed, **FAST)
    got = download(f"{public_url}/cdn/ep1.mp3", tmp_path / "ep", policy=allowed, **FAST)
    assert got.bytes == len(MP3) and http_server.hits("/cdn/ep1.mp3") == 1


@pytest.mark.parametrize("allow", ["127.0.0.0/8", "localhost, 127.0.0.1", "10.0.0.0/8 127.0.0.1/32"])
def test_allowed_hosts_and_ranges_are_reached(
    allow: str, http_server: HTTPFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ALLOW, allow)
    got = download(http_server.route("/ep.mp3", MP3, "audio/mpeg"), tmp_path / "ep", **FAST)
    assert got.bytes == len(MP3)


def test_a_bad_allow_entry_names_the_setting(
    http_server: HTTPFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ALLOW, "127.0.0.1, http://intranet/")
    with pytest.raises(ValueError, match=f"{ALLOW}: 'http://intranet/' is neither a host name"):
        download(http_server.url("/ep.mp3"), tmp_path / "ep", **FAST)


def test_a_redirect_to_another_scheme_is_refused(http_server: HTTPFixture, tmp_path: Path) -> None:
    url = http_server.route("/track", redirect_to="file:///etc/passwd")
    with pytest.raises(DownloadError, match="redirect to unsupported URL scheme 'file': file:///etc/passwd"):
        download(url, tmp_path / "ep", **FAST)


def test_an_unguarded_session_is_refused(http_server: HTTPFixture, tmp_path: Path) -> None:
    import requests

    with requests.Session() as plain, pytest.raises(ValueError, match="would bypass the address guard"):
        download(http_server.route("/ep.mp3", MP3, "audio/mpeg"), tmp_path / "ep", session=plain, **FAST)
    assert http_server.hits("/ep.mp3") == 0


def test_a_gzip_encoded_feed_is_decoded(http_server: HTTPFixture, tmp_path: Path) -> None:
    import gzip

    xml = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>' + b" " * 200_000 + b"</channel></rss>"
    url = http_server.route("/feed.gz", gzip.compress(xml), "application/rss+xml",
                            headers={"Content-Encoding": "gzip"})
    got = download(url, tmp_path / "f", accept="feed", **FAST)
    assert got.path.read_bytes() == xml and got.bytes == len(xml)


def test_https_to_a_pinned_address_still_verifies_the_name(tmp_path: Path) -> None:
    """The guard connects to the checked address, and TLS (SNI, certificate) still goes by the host name."""
    import datetime as dt
    import http.server
    import ssl

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from emilia_sources.address_guard import AddressPolicy, guarded_session

    name = "podcasts.example.org"
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "audio/mpeg")
            self.send_header("Content-Length", str(len(MP3)))
            self.end_headers()
            self.wfile.write(MP3)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    port = server.server_address[1]
    try:
        policy = AddressPolicy.parse([name, "127.0.0.1"], resolver=lambda host, _: ["127.0.0.1"])
        with guarded_session(policy) as session:
            session.verify = str(tmp_path / "cert.pem")
            got = download(f"https://{name}:{port}/ep.mp3", tmp_path / "ep", session=session, **FAST)
            assert got.bytes == len(MP3)
            with pytest.raises(DownloadError, match="TLS error"):  # the address is allowed, the name is not its cert's
                download(f"https://127.0.0.1:{port}/ep.mp3", tmp_path / "ep2", session=session, **FAST)
    finally:
        server.shutdown()
        server.server_close()
