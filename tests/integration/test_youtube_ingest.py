"""YouTube ingest through yt-dlp's real Python API, against a media/RSS server on 127.0.0.1.

yt-dlp's generic extractor is what runs here: it downloads direct media URLs and treats an RSS feed as a playlist
(GUID -> id), which exercises the same listing, per-entry download, archive and landing code a YouTube channel
takes, without any request leaving the machine.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from emilia_sources.landing import SEEN_PREFIX
from emilia_sources.youtube import YoutubeConfig, archive_key, ingest_channel
from emilia_store import LocalStore, delete_prefix, iter_objects

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
FAST = YoutubeConfig(socket_timeout_s=5, retries=0)

CONTENT_TYPES = {".mp3": "audio/mpeg", ".m4a": "audio/mp4", ".xml": "application/rss+xml"}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class MediaServer:
    """Routes (raw request path -> file or bytes) and every request seen, for counting downloads."""

    base: str
    routes: dict[str, tuple[bytes | Path, str]] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)

    def add(self, path: str, body: bytes | Path, content_type: str | None = None) -> str:
        suffix = Path(path.split("?")[0]).suffix
        self.routes[path] = (body, content_type or CONTENT_TYPES.get(suffix, "application/octet-stream"))
        return self.base + path

    def gets(self, path: str) -> int:
        return sum(r.method == "GET" and r.path == path for r in self.requests)


def _handler(server: MediaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _serve(self, body_wanted: bool) -> None:
            server.requests.append(Seen(self.command, self.path, dict(self.headers.items())))
            route = server.routes.get(self.path)
            if route is None:
                self.send_error(404, "Not Found")
                return
            body, ctype = route
            data = body.read_bytes() if isinstance(body, Path) else body
            start, end, status = 0, len(data) - 1, 200
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
            if m and data:
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), end) if m.group(2) else end
                else:  # suffix range: the last N bytes
                    start = max(0, len(data) - int(m.group(2) or 0))
                if start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                status = 206
            chunk = data[start : end + 1]
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.end_headers()
            if body_wanted:
                # the generic extractor reads a few bytes of a media URL, then hangs up
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(chunk)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._serve(True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve(False)

    return Handler


@pytest.fixture
def media_server() -> Iterator[MediaServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), None)  # type: ignore[arg-type]
    srv = MediaServer(base=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.RequestHandlerClass = _handler(srv)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield srv
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy may reroute 127.0.0.1, nothing yt-dlp does may need the internet, and the address guard lets the
    media server on 127.0.0.1 through."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("INGEST_ALLOW_HOSTS", "127.0.0.1")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Short clips cut from the bundled samples: MP3 (re-encoded by yt-dlp to AAC) and an AAC m4a (stream copy)."""
    out = tmp_path_factory.mktemp("clips")
    made: dict[str, Path] = {}
    for i, stem in enumerate(["monologue", "two_voices", "music_bed", "long_silence"]):
        mp3 = out / f"{stem}.mp3"
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-y",
                "-ss",
                str(i),
                "-t",
                "6",
                "-i",
                str(SAMPLES / f"{stem}.mp3"),
                "-c",
                "copy",
                str(mp3),
            ],
            check=True,
        )
        made[stem] = mp3
    m4a = out / "monologue.m4a"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-t",
            "6",
            "-i",
            str(SAMPLES / "monologue.mp3"),
            "-vn",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            str(m4a),
        ],
        check=True,
    )
    made["m4a"] = m4a
    return made


def _rss(items: list[dict[str, str]]) -> bytes:
    body = "".join(
        "<item>"
        f"<title><![CDATA[{it['title']}]]></title>"
        + (f'<guid isPermaLink="false"><![CDATA[{it["guid"]}]]></guid>' if it.get("guid") else "")
        + f"<pubDate>{it.get('date', 'Tue, 03 Nov 2026 10:00:00 +0000')}</pubDate>"
        "<itunes:duration>6</itunes:duration>"
        f'<enclosure url="{it["url"]}" type="audio/mpeg" length="1"/>'
        "</item>"
        for it in items
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd">'
        f"<channel><title>Test show</title><link>http://127.0.0.1/</link><description>d</description>{body}"
        "</channel></rss>"
    ).encode()


def _feed(srv: MediaServer, clips: dict[str, Path], stems: list[str], prefix: str = "/ep") -> tuple[str, list[str]]:
    paths, items = [], []
    for i, stem in enumerate(stems):
        path = f"{prefix}{i}.mp3"
        srv.add(path, clips[stem])
        paths.append(path)
        items.append(
            {
                "title": f"Episode {i}",
                "guid": f"guid-{i}",
                "url": srv.base + path,
                "date": f"Tue, 0{i + 1} Nov 2026 10:00:00 +0000",
            }
        )
    return srv.add(f"{prefix}-feed.xml", _rss(items)), paths


def _audio_keys(store: LocalStore | object) -> list[str]:
    return [o.key for o in iter_objects(store, "raw_audio/") if not o.key.endswith(".json")]  # type: ignore[arg-type]


def test_direct_media_url_lands_as_m4a_once(
    local_store: LocalStore, media_server: MediaServer, clips: dict[str, Path]
) -> None:
    url = media_server.add("/media/talk.m4a", clips["m4a"])
    logs: list[str] = []

    report = ingest_channel(local_store, url, language="en", config=FAST, log=logs.append)

    assert report.error is None, report.error
    assert [o.status for o in report.outcomes] == ["new"], report.outcomes
    out = report.outcomes[0]
    sid = report.source_id
    assert sid.startswith("yt-")
    assert out.key is not None and out.key.startswith(f"raw_audio/en/{sid}/") and out.key.endswith(".m4a")
    assert out.bytes > 0 and out.duration_s == pytest.approx(6.0, abs=0.2)
    landed = local_store.path(out.key)
    assert landed.read_bytes()[4:8] == b"ftyp"  # an MP4 container

    sidecar = json.loads(local_store.get_bytes(out.key[: -len(".m4a")] + ".json"))
    assert sidecar["source"] == "youtube"
    assert sidecar["webpage_url"] == url
    assert sidecar["source_url"] == url and sidecar["source_id"] == sid
    assert sidecar["id"] == "talk" and sidecar["extractor"] == "Generic"
    assert sidecar["language"] == "en"
    assert sidecar["duration"] == pytest.approx(6.0, abs=0.2)
    assert sidecar["codec"] == "aac" and sidecar["bytes"] == out.bytes
    assert {"title", "channel", "uploader", "published", "categories", "tags", "license"} <= sidecar.keys()
    assert local_store.get_bytes(archive_key(sid)).decode().splitlines() == ["generic talk"]
    assert any(line.startswith("yt-dlp") for line in logs)  # yt-dlp's own messages go through `log`

    gets = media_server.gets("/media/talk.m4a")
    assert gets >= 1
    again = ingest_channel(local_store, url, language="en", config=FAST, log=logs.append)
    assert [o.status for o in again.outcomes] == ["skipped"]
    assert again.outcomes[0].key == out.key
    assert media_server.gets("/media/talk.m4a") == gets  # not even a probe request
    assert _audio_keys(local_store) == [out.key]


@pytest.mark.parametrize("store_kind", ["local", "s3"])
def test_rss_feed_is_a_playlist_and_the_archive_prevents_downloads(
    store_kind: str, request: pytest.FixtureRequest, media_server: MediaServer, clips: dict[str, Path]
) -> None:
    store = request.getfixturevalue(f"{store_kind}_store")
    feed, paths = _feed(media_server, clips, ["monologue", "two_voices", "music_bed"])

    report = ingest_channel(store, feed, source_id="yt-feed", language="de", config=FAST, log=lambda _: None)

    assert report.error is None, report.error
    assert report.count("new") == 3, report.outcomes
    keys = sorted(o.key for o in report.outcomes)  # type: ignore[type-var]
    assert all(k.startswith("raw_audio/de/yt-feed/") and k.endswith(".m4a") for k in keys)
    assert _audio_keys(store) == keys
    assert report.new_hours == pytest.approx(18 / 3600, rel=0.05)
    archive = store.get_bytes(archive_key("yt-feed")).decode().splitlines()
    assert sorted(archive) == ["generic guid-0", "generic guid-1", "generic guid-2"]
    by_url = {o.url: o for o in report.outcomes}
    sidecar = json.loads(store.get_bytes(by_url[media_server.base + paths[1]].key.rsplit(".", 1)[0] + ".json"))
    assert sidecar["title"] == "Episode 1" and sidecar["id"] == "guid-1"
    assert sidecar["published"] == "2026-11-02T10:00:00+00:00"
    assert sidecar["webpage_url"] == media_server.base + paths[1]  # no smuggled fragment

    before = {p: media_server.gets(p) for p in paths}
    assert all(n >= 1 for n in before.values())
    rerun = ingest_channel(store, feed, source_id="yt-feed", language="de", config=FAST, log=lambda _: None)
    assert rerun.error is None
    assert [o.status for o in rerun.outcomes] == ["skipped"] * 3
    assert {p: media_server.gets(p) for p in paths} == before

    # Without the dedupe markers, the download archive alone still keeps every entry from downloading again.
    delete_prefix(store, SEEN_PREFIX)
    third = ingest_channel(store, feed, source_id="yt-feed", language="de", config=FAST, log=lambda _: None)
    assert [(o.status, o.reason) for o in third.outcomes] == [("skipped", "in download archive")] * 3
    assert {p: media_server.gets(p) for p in paths} == before
    assert _audio_keys(store) == keys


def test_one_missing_item_fails_alone(
    local_store: LocalStore, media_server: MediaServer, clips: dict[str, Path]
) -> None:
    feed, paths = _feed(media_server, clips, ["monologue", "two_voices", "music_bed"])
    del media_server.routes[paths[1]]  # the middle enclosure now 404s

    report = ingest_channel(local_store, feed, source_id="yt-broken", config=FAST, log=lambda _: None)

    assert report.error is None
    statuses = {o.url: o.status for o in report.outcomes}
    assert statuses == {
        media_server.base + paths[0]: "new",
        media_server.base + paths[1]: "failed",
        media_server.base + paths[2]: "new",
    }
    failed = next(o for o in report.outcomes if o.status == "failed")
    assert failed.reason and "404" in failed.reason
    assert failed.key is None
    assert sorted(local_store.get_bytes(archive_key("yt-broken")).decode().splitlines()) == [
        "generic guid-0",
        "generic guid-2",
    ]

    # Once it is back, the next run lands just that one.
    media_server.add(paths[1], clips["two_voices"])
    rerun = ingest_channel(local_store, feed, source_id="yt-broken", config=FAST, log=lambda _: None)
    assert sorted(o.status for o in rerun.outcomes) == ["new", "skipped", "skipped"]


def test_an_unreadable_download_fails_and_stays_out_of_the_archive(
    local_store: LocalStore, media_server: MediaServer, clips: dict[str, Path]
) -> None:
    feed, paths = _feed(media_server, clips, ["monologue", "two_voices"])
    media_server.add(paths[0], b"this is not audio at all\n" * 200, "audio/mpeg")

    report = ingest_channel(local_store, feed, source_id="yt-bad", config=FAST, log=lambda _: None)

    assert [o.status for o in report.outcomes] == ["failed", "new"], report.outcomes
    assert report.outcomes[0].reason
    assert local_store.get_bytes(archive_key("yt-bad")).decode().splitlines() == ["generic guid-1"]
    gets = media_server.gets(paths[0])
    again = ingest_channel(local_store, feed, source_id="yt-bad", config=FAST, log=lambda _: None)
    assert [o.status for o in again.outcomes] == ["failed", "skipped"]
    assert media_server.gets(paths[0]) > gets  # tried again: a failure is never archived


def test_hostile_titles_and_ids_stay_inside_the_source_prefix(
    local_store: LocalStore, media_server: MediaServer, clips: dict[str, Path], tmp_path: Path
) -> None:
    items = [
        {
            "title": "../../etc/passwd",
            "guid": "../../../../etc/passwd",
            "url": media_server.add("/a.mp3", clips["monologue"]),
        },
        {"title": "/etc/shadow", "guid": "/etc/shadow", "url": media_server.add("/b.mp3", clips["two_voices"])},
        # no GUID: yt-dlp's id comes from the (percent-encoded) file name
        {"title": "C:\\Windows\\x", "url": media_server.add("/..%2F..%2Fetc%2Fpasswd.mp3", clips["music_bed"])},
    ]
    feed = media_server.add("/hostile.xml", _rss(items))

    report = ingest_channel(local_store, feed, config=FAST, log=lambda _: None)

    assert report.error is None
    assert report.count("new") == 3, report.outcomes
    sid = report.source_id
    for o in report.outcomes:
        assert o.key is not None and re.fullmatch(rf"raw_audio/und/{sid}/[0-9a-f]{{16}}\.m4a", o.key), o.key
    every = [o.key for o in iter_objects(local_store, "")]
    assert all(k.startswith((f"raw_audio/und/{sid}/", "sources/")) for k in every), every
    titles = sorted(
        json.loads(local_store.get_bytes(k))["title"]
        for k in every
        if k.startswith("raw_audio/") and k.endswith(".json")
    )
    assert titles == sorted(["../../etc/passwd", "/etc/shadow", "C:\\Windows\\x"])
    assert not list(tmp_path.rglob("passwd")) and not list(tmp_path.rglob("shadow"))


def test_cookies_reach_the_server_and_never_the_log(
    local_store: LocalStore, media_server: MediaServer, clips: dict[str, Path], tmp_path: Path
) -> None:
    cookies = tmp_path / "secret-cookies.txt"
    text = "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t4102444800\tSESSIONTOKEN\ts3cr3t-value\n"
    cookies.write_text(text)
    url = media_server.add("/c.m4a", clips["m4a"])
    logs: list[str] = []

    report = ingest_channel(
        local_store,
        url,
        config=YoutubeConfig(socket_timeout_s=5, retries=0, cookies_file=str(cookies)),
        log=logs.append,
    )

    assert report.count("new") == 1, report.outcomes
    media_gets = [r for r in media_server.requests if r.path == "/c.m4a" and r.method == "GET"]
    assert media_gets and all("SESSIONTOKEN=s3cr3t-value" in r.headers.get("Cookie", "") for r in media_gets)
    joined = "\n".join(logs)
    assert logs and str(cookies) not in joined and "s3cr3t" not in joined and "cookies.txt" not in joined
    assert cookies.read_text() == text  # yt-dlp saves its jar on close: only ever into its private copy


def test_unreachable_source_is_a_report_error(local_store: LocalStore, media_server: MediaServer) -> None:
    report = ingest_channel(local_store, media_server.base + "/nothing-here.xml", config=FAST, log=lambda _: None)

    assert report.error and "404" in report.error
    assert report.outcomes == []
    assert _audio_keys(local_store) == []


def test_non_public_sources_and_entries_are_refused_before_yt_dlp_sees_them(
    local_store: LocalStore, media_server: MediaServer, clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    feed_url, paths = _feed(media_server, clips, ["monologue"])
    metadata_url = "http://169.254.169.254/latest/meta-data/ep.mp3"
    mixed = media_server.add("/mixed.xml", _rss([
        {"title": "ok", "guid": "ok", "url": media_server.base + paths[0]},
        {"title": "imds", "guid": "imds", "url": metadata_url, "date": "Mon, 02 Nov 2026 10:00:00 +0000"},
    ]))
    hint = "(set INGEST_ALLOW_HOSTS to allow it)"

    report = ingest_channel(local_store, mixed, config=FAST, log=lambda _: None)  # 127.0.0.1 allowed by _offline
    assert {o.url: (o.status, o.reason) for o in report.outcomes}[metadata_url] == (
        "failed", f"refused: 169.254.169.254 is a link-local address {hint}")
    assert report.count("new") == 1

    monkeypatch.delenv("INGEST_ALLOW_HOSTS")
    refused = ingest_channel(local_store, feed_url, config=FAST, log=lambda _: None)
    assert refused.error == f"refused: 127.0.0.1 is a loopback address {hint}" and refused.outcomes == []
    assert media_server.gets("/ep-feed.xml") == 0


def test_max_videos_per_run_takes_the_first_entries(
    local_store: LocalStore, media_server: MediaServer, clips: dict[str, Path]
) -> None:
    feed, paths = _feed(media_server, clips, ["monologue", "two_voices", "music_bed"])

    report = ingest_channel(
        local_store,
        feed,
        source_id="yt-cap",
        config=YoutubeConfig(socket_timeout_s=5, retries=0, max_videos_per_run=2),
        log=lambda _: None,
    )

    assert report.count("new") == 2
    assert media_server.gets(paths[2]) == 0


def test_a_live_stream_is_skipped_not_archived(
    local_store: LocalStore, media_server: MediaServer, clips: dict[str, Path]
) -> None:
    media_server.add("/live/seg0.mp3", clips["monologue"])
    # An HLS playlist without EXT-X-ENDLIST is a live stream: downloading it would not end with the programme.
    playlist = b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:6\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:6.0,\nseg0.mp3\n"
    url = media_server.add("/live/index.m3u8", playlist, "application/vnd.apple.mpegurl")

    report = ingest_channel(local_store, url, source_id="yt-live", config=FAST, log=lambda _: None)

    assert report.error is None, report.error
    assert [(o.status, o.reason) for o in report.outcomes] == [("skipped", "live or upcoming stream")]
    assert media_server.gets("/live/seg0.mp3") == 0
    assert not local_store.exists(archive_key("yt-live"))
    assert _audio_keys(local_store) == []
