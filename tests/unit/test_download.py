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


def test_connection_refused_is_retried_then_reported(tmp_path: Path) -> None:
    import socket

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
