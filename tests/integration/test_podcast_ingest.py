"""Podcast ingest end to end against a local HTTP server: feeds and enclosures that misbehave, landing, dedupe."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

import pytest

from emilia_sources.feeds import FeedSource
from emilia_sources.landing import SEEN_PREFIX, source_id_for
from emilia_sources.podcasts import PodcastConfig, ingest_feed
from emilia_store import ObjectStore, iter_objects

if TYPE_CHECKING:
    from tests.http_fixture import HTTPFixture

pytest_plugins = ["tests.http_fixture"]  # the `http_server` fixture

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
AUDIO = {stem: (SAMPLES / f"{stem}.mp3").read_bytes() for stem in ("monologue", "two_voices", "music_bed")}
TALK_CATEGORIES = '<itunes:category text="News"/><itunes:category text="Society &amp; Culture"/>'
KEY = re.compile(r"^raw_audio/en/(?P<source>[A-Za-z0-9_-]+)/[0-9a-f]{16}\.(?P<ext>[a-z0-9]+)$")


def rss(items: list[dict[str, str]], *, title: str = "The Interview Hour", categories: str = TALK_CATEGORIES,
        language: str = "en-US") -> bytes:
    """An RSS 2.0 + iTunes feed; items give title, guid, url, date (RFC 822) and optional type/duration.

    `guid` is written with isPermaLink="false"; `bare_guid` without the attribute (so, by RSS 2.0, a permalink).
    """
    body = []
    for it in items:
        body.append(
            "<item>"
            f"<title>{escape(it['title'])}</title>"
            + (f"<guid isPermaLink=\"false\">{escape(it['guid'])}</guid>" if "guid" in it else "")
            + (f"<guid>{escape(it['bare_guid'])}</guid>" if "bare_guid" in it else "")
            + f"<enclosure url={quoteattr(it['url'])} type=\"{it.get('type', 'audio/mpeg')}\" length=\"1\"/>"
            f"<pubDate>{it['date']}</pubDate>"
            f"<itunes:duration>{it.get('duration', '00:45')}</itunes:duration>"
            "</item>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"><channel>'
        f"<title>{escape(title)}</title><language>{language}</language>"
        "<description>Long-form interviews and conversation.</description>"
        f"{categories}{''.join(body)}</channel></rss>"
    ).encode()


def day(n: int) -> str:
    return f"Mon, {n:02d} Jan 2024 08:00:00 GMT"


@pytest.fixture
def config(tmp_path: Path) -> PodcastConfig:
    (tmp_path / "work").mkdir()
    return PodcastConfig(min_interval_per_host_s=0.0, backoff_s=0.01, retries=2, tmp_dir=str(tmp_path / "work"))


def keys(store: ObjectStore) -> list[str]:
    return [o.key for o in iter_objects(store, "")]


def audio_keys(store: ObjectStore) -> list[str]:
    return [k for k in keys(store) if k.startswith("raw_audio/") and not k.endswith(".json")]


def assert_contained(store: ObjectStore, source_id: str) -> None:
    """Every key is the source's hashed audio or sidecar, or a dedupe marker: nothing a feed named."""
    for key in keys(store):
        assert ".." not in key and not key.startswith("/")
        if key.startswith(SEEN_PREFIX):
            continue
        stem_key = key[: -len(".json")] + ".mp3" if key.endswith(".json") else key
        m = KEY.match(stem_key)
        assert m and m["source"] == source_id, key


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_new_episodes_land_with_sidecars_and_a_second_run_downloads_nothing(
    any_store: ObjectStore, http_server: HTTPFixture, config: PodcastConfig
) -> None:
    media = {f"/media/{stem}.mp3": data for stem, data in AUDIO.items()}
    for path, data in media.items():
        http_server.route(path, data, "audio/mpeg")
    items = [{"title": f"Episode {i}", "guid": f"guid-{i}", "url": http_server.url(path), "date": day(i + 1)}
             for i, path in enumerate(media)]
    feed_url = http_server.route("/feed.xml", rss(items), "application/rss+xml")
    source = FeedSource(feed_url)  # no id: derived from the URL
    logs: list[str] = []

    report = ingest_feed(any_store, source, config=config, log=logs.append)

    sid = source_id_for(feed_url, "feed")
    assert report.error is None and report.source_id == sid
    assert report.count("new") == 3 and report.count("failed") == 0
    assert report.new_bytes == sum(len(d) for d in AUDIO.values())
    assert 1 / 60 < report.new_hours < 0.1  # probed: 36-50 s each
    assert_contained(any_store, sid)
    by_url = {o.url: o for o in report.outcomes}
    for item, data in zip(items, media.values(), strict=True):
        outcome = by_url[item["url"]]
        assert outcome.key == f"raw_audio/en/{sid}/{hashlib.sha256(item['url'].encode()).hexdigest()[:16]}.mp3"
        assert sha(any_store.get_bytes(outcome.key)) == sha(data)
        sidecar = json.loads(any_store.get_bytes(outcome.key[:-4] + ".json"))
        assert sidecar["title"] == item["title"] and sidecar["guid"] == item["guid"]
        assert sidecar["enclosure_url"] == item["url"] and sidecar["feed_url"] == feed_url
        assert sidecar["feed_title"] == "The Interview Hour" and sidecar["language"] == "en"
        assert sidecar["categories"] == ["News", "Society & Culture"] and sidecar["source"] == "podcast"
        assert sidecar["published"].startswith("2024-01-0") and 30 < sidecar["duration"] < 60
        assert {"explicit", "link"} <= sidecar.keys()
    assert [o.url for o in report.outcomes] == [it["url"] for it in reversed(items)]  # newest first
    assert any("3 new" in line for line in logs)

    media_hits = http_server.hits(*media)
    again = ingest_feed(any_store, source, config=config, log=logs.append)
    assert again.count("new") == 0 and again.count("skipped") == 3 and again.error is None
    assert {o.key for o in again.outcomes} == {o.key for o in report.outcomes}
    assert http_server.hits(*media) == media_hits == 3  # the second run fetched the feed only
    assert http_server.hits("/feed.xml") == 2
    assert list(Path(config.tmp_dir).iterdir()) == []  # type: ignore[arg-type]


def test_malformed_feed_is_recorded_and_nothing_is_written(
    local_store: ObjectStore, http_server: HTTPFixture, config: PodcastConfig
) -> None:
    http_server.route("/media/a.mp3", AUDIO["monologue"], "audio/mpeg")
    broken = b'<?xml version="1.0"?><rss version="2.0"><channel><title>Oops</title'
    url = http_server.route("/broken.xml", broken, "application/rss+xml")
    report = ingest_feed(local_store, FeedSource(url, id="broken"), config=config, log=lambda _: None)
    assert report.error is not None and report.error.startswith("not a usable feed: malformed XML")
    assert report.outcomes == [] and keys(local_store) == []

    html = http_server.route("/page", b"<!DOCTYPE html><html><body>We moved!</body></html>", "text/html")
    report = ingest_feed(local_store, FeedSource(html), config=config, log=lambda _: None)
    assert report.error == "feed unreachable: not a feed: server sent Content-Type 'text/html'"
    report = ingest_feed(local_store, FeedSource(http_server.url("/gone.xml")), config=config, log=lambda _: None)
    assert report.error == "feed unreachable: HTTP 404 Not Found"
    assert keys(local_store) == []


def test_one_bad_enclosure_never_stops_the_feed(
    local_store: ObjectStore, http_server: HTTPFixture, config: PodcastConfig
) -> None:
    config.max_episode_bytes = 1 * 2**20
    good = http_server.route("/ok.mp3", AUDIO["two_voices"], "audio/mpeg")
    http_server.route("/loop.mp3", redirect_to="/loop.mp3")
    cases = {
        http_server.url("/missing.mp3"): "HTTP 404 Not Found",
        http_server.route("/huge.mp3", AUDIO["monologue"], "audio/mpeg", announce_length=3 * 2**30):
            "too large: 3.00 GiB announced, the cap is 1.0 MiB",
        http_server.route("/endless.mp3", AUDIO["monologue"] * 5, "audio/mpeg", send_length=False):
            "too large: the stream went past the cap of 1.0 MiB",
        http_server.route("/page.mp3", b"<html><body>" + b"Episode removed. " * 20 + b"</body></html>",
                          "audio/mpeg"): "not audio: content starts with b'<html><body>",
        http_server.route("/typed.mp3", b"<html>moved</html>", "text/html"):
            "not audio: server sent Content-Type 'text/html'",
        http_server.url("/loop.mp3"): "redirect loop or too many redirects",
        http_server.route("/fake.mp3", b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 64, "audio/mpeg"):
            "unreadable audio",
        "ftp://example.org/ep.mp3": "unsupported URL scheme 'ftp'",
    }
    items = [{"title": f"bad {i}", "guid": f"bad-{i}", "url": url, "date": day(i + 2)} for i, url in enumerate(cases)]
    items.append({"title": "good", "guid": "good", "url": good, "date": day(1)})  # the oldest: tried last
    feed_url = http_server.route("/feed.xml", rss(items), "application/rss+xml")

    report = ingest_feed(local_store, FeedSource(feed_url, id="mixed"), config=config, log=lambda _: None)

    assert report.error is None
    by_url = {o.url: o for o in report.outcomes}
    for url, reason in cases.items():
        assert by_url[url].status == "failed", url
        assert by_url[url].reason is not None and by_url[url].reason.startswith(reason), by_url[url].reason
    assert by_url[good].status == "new" and report.count("new") == 1
    assert audio_keys(local_store) == [by_url[good].key]
    assert_contained(local_store, "mixed")
    assert list(Path(config.tmp_dir).iterdir()) == []  # type: ignore[arg-type]  # no .part, no episode left


def test_dropped_connection_is_resumed_and_lands_the_exact_bytes(
    local_store: ObjectStore, http_server: HTTPFixture, config: PodcastConfig
) -> None:
    resumed = http_server.route("/resumed.mp3", AUDIO["monologue"], "audio/mpeg", drop_first=1)
    restarted = http_server.route("/restarted.mp3", AUDIO["two_voices"], "audio/mpeg", drop_first=1, ranges=False)
    items = [{"title": "a", "url": resumed, "date": day(2)}, {"title": "b", "url": restarted, "date": day(1)}]
    feed_url = http_server.route("/feed.xml", rss(items), "application/rss+xml")

    report = ingest_feed(local_store, FeedSource(feed_url, id="flaky"), config=config, log=lambda _: None)

    assert report.count("new") == 2
    by_url = {o.url: o for o in report.outcomes}
    assert sha(local_store.get_bytes(by_url[resumed].key)) == sha(AUDIO["monologue"])
    assert sha(local_store.get_bytes(by_url[restarted].key)) == sha(AUDIO["two_voices"])
    assert http_server.log("/resumed.mp3")[1].headers["range"].startswith("bytes=")
    assert len(http_server.log("/restarted.mp3")) == 2


def test_hostile_guid_and_title_cannot_steer_keys(
    local_store: ObjectStore, http_server: HTTPFixture, config: PodcastConfig
) -> None:
    items = [
        {"title": "../../../../etc/passwd", "guid": "../../../outside", "date": day(3),
         "url": http_server.route("/x.mp3", AUDIO["monologue"], "audio/mpeg").replace("/x.mp3", "/a/../../x.mp3")},
        {"title": "/abs/path", "guid": "/etc/shadow", "date": day(2),
         "url": http_server.route("/b.mp3", AUDIO["two_voices"], "audio/mpeg") + "?name=../../evil.sh"},
        {"title": "C:\\Windows\\x", "guid": "..\\..\\win", "date": day(1),
         "url": http_server.route("/c%2F..%2F..mp3", AUDIO["music_bed"], "audio/mpeg")},
    ]
    feed_url = http_server.route("/feed.xml", rss(items), "application/rss+xml")
    source_id = "../../escape attempt"  # even a hostile id from a feed list is reduced to a slug

    report = ingest_feed(local_store, FeedSource(feed_url, id=source_id), config=config, log=lambda _: None)

    assert report.count("failed") == 0, [o.reason for o in report.outcomes]
    assert report.count("new") == 3
    written = keys(local_store)
    assert all(".." not in k and "\\" not in k for k in written)
    assert_contained(local_store, "escape-attempt")
    root = Path(local_store.root)  # type: ignore[attr-defined]
    assert all(p.resolve().is_relative_to(root) for p in root.rglob("*"))
    sidecars = [json.loads(local_store.get_bytes(k)) for k in written if k.startswith("raw_audio/") and
                k.endswith(".json")]
    assert {s["guid"] for s in sidecars} == {"../../../outside", "/etc/shadow", "..\\..\\win"}  # kept as data


def test_same_enclosure_or_same_audio_in_two_feeds_lands_once(
    local_store: ObjectStore, http_server: HTTPFixture, config: PodcastConfig
) -> None:
    shared = http_server.route("/shared.mp3", AUDIO["monologue"], "audio/mpeg")
    mirror = http_server.route("/mirror.mp3", AUDIO["monologue"], "audio/mpeg")  # another URL, the same bytes
    first = http_server.route("/one.xml", rss([{"title": "x", "guid": "ep-1", "url": shared, "date": day(1)}]),
                              "application/rss+xml")
    second = http_server.route("/two.xml", rss([
        {"title": "x (syndicated)", "guid": "other-guid", "url": shared, "date": day(2)},
        {"title": "x (mirror)", "guid": "ep-1", "url": mirror, "date": day(1)},
    ], title="Interview Mirror"), "application/rss+xml")

    a = ingest_feed(local_store, FeedSource(first, id="one"), config=config, log=lambda _: None)
    b = ingest_feed(local_store, FeedSource(second, id="two"), config=config, log=lambda _: None)

    assert a.count("new") == 1 and b.count("new") == 0 and b.count("skipped") == 2
    assert {o.key for o in b.outcomes} == {a.outcomes[0].key}
    assert {o.url: o.reason for o in b.outcomes}[mirror] == "same audio already landed"
    assert len(audio_keys(local_store)) == 1
    assert http_server.hits("/shared.mp3") == 1 and http_server.hits("/mirror.mp3") == 1  # fetched once, to know

    again = ingest_feed(local_store, FeedSource(second, id="two"), config=config, log=lambda _: None)
    assert again.count("skipped") == 2 and http_server.hits("/mirror.mp3") == 1  # and never again


def test_the_same_guid_in_two_shows_on_one_host_does_not_merge_them(
    local_store: ObjectStore, http_server: HTTPFixture, config: PodcastConfig
) -> None:
    """`<guid>1</guid>` without isPermaLink="false" becomes a URL on the feed's host (http://host/shows/1) for
    feedparser: two shows in one folder that number their episodes alike must still both land."""
    first = http_server.route("/media/a1.mp3", AUDIO["monologue"], "audio/mpeg")
    second = http_server.route("/media/b1.mp3", AUDIO["two_voices"], "audio/mpeg")
    feed_a = http_server.route("/shows/a.xml", rss([{"title": "A1", "bare_guid": "1", "url": first, "date": day(1)}]),
                               "application/rss+xml")
    feed_b = http_server.route("/shows/b.xml", rss([{"title": "B1", "bare_guid": "1", "url": second, "date": day(1)}],
                                                   title="Another Interview Show"), "application/rss+xml")

    a = ingest_feed(local_store, FeedSource(feed_a), config=config, log=lambda _: None)
    b = ingest_feed(local_store, FeedSource(feed_b), config=config, log=lambda _: None)

    assert (a.count("new"), b.count("new")) == (1, 1), [o.reason for o in b.outcomes]
    assert len(audio_keys(local_store)) == 2 and http_server.hits("/media/a1.mp3", "/media/b1.mp3") == 2

    # Within one show the GUID still identifies the episode: a new enclosure URL for GUID 1 is not fetched.
    moved = http_server.route("/media/a1-v2.mp3", AUDIO["monologue"], "audio/mpeg")
    http_server.route("/shows/a.xml", rss([{"title": "A1", "bare_guid": "1", "url": moved, "date": day(1)}]),
                      "application/rss+xml")
    again = ingest_feed(local_store, FeedSource(feed_a), config=config, log=lambda _: None)
    assert [(o.status, o.key) for o in again.outcomes] == [("skipped", a.outcomes[0].key)]
    assert http_server.hits("/media/a1-v2.mp3") == 0


def test_unscoped_guid_markers_of_older_stores_count_only_for_their_own_source(
    local_store: ObjectStore, http_server: HTTPFixture, config: PodcastConfig
) -> None:
    from emilia_sources.landing import _marker

    old_key = "raw_audio/en/old-show/0123456789abcdef.mp3"  # landed by feed "old-show" before GUIDs were scoped
    local_store.put_bytes(_marker("guid", "ep-1"), json.dumps({"key": old_key, "url": "http://gone/x.mp3"}).encode())
    ep = http_server.route("/ep.mp3", AUDIO["monologue"], "audio/mpeg")
    feed = http_server.route("/f.xml", rss([{"title": "x", "guid": "ep-1", "url": ep, "date": day(1)}]),
                             "application/rss+xml")

    same = ingest_feed(local_store, FeedSource(feed, id="old-show"), config=config, log=lambda _: None)
    other = ingest_feed(local_store, FeedSource(feed.replace("/f.xml", "/f.xml?copy"), id="new-show"),
                        config=config, log=lambda _: None)

    assert [(o.status, o.key) for o in same.outcomes] == [("skipped", old_key)]
    assert other.count("new") == 1 and other.outcomes[0].key.startswith("raw_audio/en/new-show/")


def test_a_failed_enclosure_is_remembered_and_retried_later_and_later(
    local_store: ObjectStore, http_server: HTTPFixture, config: PodcastConfig
) -> None:
    good = http_server.route("/good.mp3", AUDIO["monologue"], "audio/mpeg")
    dead = http_server.url("/dead.mp3")  # 404 for now
    feed_url = http_server.route("/feed.xml", rss([
        {"title": "dead", "guid": "d", "url": dead, "date": day(2)},
        {"title": "good", "guid": "g", "url": good, "date": day(1)},
    ]), "application/rss+xml")
    source = FeedSource(feed_url, id="show")

    first = ingest_feed(local_store, source, config=config, log=lambda _: None)
    by_url = {o.url: o for o in first.outcomes}
    assert by_url[dead].status == "failed" and by_url[dead].reason == "HTTP 404 Not Found"
    assert http_server.hits("/dead.mp3") == 1

    second = ingest_feed(local_store, source, config=config, log=lambda _: None)  # the next refresh, at once
    assert http_server.hits("/dead.mp3") == 1  # not asked again
    assert {o.url: o.status for o in second.outcomes} == {dead: "deferred", good: "skipped"}
    assert by_url[dead].failures == 1 and by_url[dead].retry_at

    from emilia_sources.failures import failure_key

    record = json.loads(local_store.get_bytes(failure_key(dead)))
    assert (record["failures"], record["reason"], record["source_id"]) == (1, "HTTP 404 Not Found", "show")

    def at(iso: str, plus_s: float) -> Callable[[], float]:
        return lambda: datetime.fromisoformat(iso).timestamp() + plus_s

    # due after one hour: tried again, fails again, and now waits two hours
    third = ingest_feed(local_store, source, config=config, clock=at(record["next_retry_at"], 1), log=lambda _: None)
    assert {o.url: o.status for o in third.outcomes}[dead] == "failed" and http_server.hits("/dead.mp3") == 2
    again = json.loads(local_store.get_bytes(failure_key(dead)))
    waited = datetime.fromisoformat(again["next_retry_at"]) - datetime.fromisoformat(again["last_failed_at"])
    assert again["failures"] == 2 and waited.total_seconds() == 2 * 3600
    assert again["first_failed_at"] == record["first_failed_at"]
    before = ingest_feed(local_store, source, config=config, clock=at(again["next_retry_at"], -60),
                         log=lambda _: None)
    assert {o.url: o.status for o in before.outcomes}[dead] == "deferred" and http_server.hits("/dead.mp3") == 2

    # the host puts the file back: at the next due time it lands and the record is gone
    http_server.route("/dead.mp3", AUDIO["two_voices"], "audio/mpeg")
    back = ingest_feed(local_store, source, config=config, clock=at(again["next_retry_at"], 1), log=lambda _: None)
    assert {o.url: o.status for o in back.outcomes}[dead] == "new"
    assert not local_store.exists(failure_key(dead))


def test_the_retry_delay_doubles_up_to_a_cap() -> None:
    from emilia_sources.failures import RetryPolicy

    policy = RetryPolicy()
    assert [policy.delay_s(n) / 3600 for n in (1, 2, 3, 4, 8, 9, 30)] == [1, 2, 4, 8, 128, 168, 168]


def test_a_feed_on_a_non_public_address_is_refused(
    local_store: ObjectStore, http_server: HTTPFixture, config: PodcastConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    ep = http_server.route("/ep.mp3", AUDIO["monologue"], "audio/mpeg")
    feed_url = http_server.route("/feed.xml", rss([{"title": "x", "url": ep, "date": day(1)}]), "application/rss+xml")
    monkeypatch.delenv("INGEST_ALLOW_HOSTS")

    report = ingest_feed(local_store, FeedSource(feed_url), config=config, log=lambda _: None)

    assert report.error == ("feed unreachable: refused: 127.0.0.1 is a loopback address "
                            "(set INGEST_ALLOW_HOSTS to allow it)")
    assert http_server.hits("/feed.xml", "/ep.mp3") == 0 and keys(local_store) == []
    config.allow_hosts = ("127.0.0.0/8",)  # the run config's allow list works as the variable does
    assert ingest_feed(local_store, FeedSource(feed_url), config=config, log=lambda _: None).count("new") == 1


def test_an_enclosure_on_the_metadata_address_is_refused(
    local_store: ObjectStore, http_server: HTTPFixture, config: PodcastConfig
) -> None:
    ok = http_server.route("/ok.mp3", AUDIO["monologue"], "audio/mpeg")
    hop = http_server.route("/hop.mp3", redirect_to="http://169.254.169.254/latest/meta-data/")
    feed_url = http_server.route("/feed.xml", rss([
        {"title": "direct", "url": "http://169.254.169.254/latest/meta-data/iam/", "date": day(3)},
        {"title": "redirected", "url": hop, "date": day(2)},
        {"title": "fine", "url": ok, "date": day(1)},
    ]), "application/rss+xml")
    config.timeout_s = 0.5  # the code before the guard tried to connect there

    report = ingest_feed(local_store, FeedSource(feed_url, id="ssrf"), config=config, log=lambda _: None)

    reasons = {o.url: (o.status, o.reason) for o in report.outcomes}
    hint = "(set INGEST_ALLOW_HOSTS to allow it)"
    assert reasons["http://169.254.169.254/latest/meta-data/iam/"] == (
        "failed", f"refused: 169.254.169.254 is a link-local address {hint}")
    assert reasons[hop] == ("failed", "refused: redirect to http://169.254.169.254/latest/meta-data/: "
                                      f"169.254.169.254 is a link-local address {hint}")
    assert reasons[ok][0] == "new" and http_server.hits("/hop.mp3") == 1


def test_music_feed_is_dropped_by_the_dialogue_score(
    local_store: ObjectStore, http_server: HTTPFixture, config: PodcastConfig
) -> None:
    ep = http_server.route("/beats.mp3", AUDIO["music_bed"], "audio/mpeg")
    feed_url = http_server.route("/lofi.xml", rss(
        [{"title": "3 hours of chill", "url": ep, "date": day(1)}],
        title="lofi beats to sleep", categories='<itunes:category text="Music"/>',
    ), "application/rss+xml")

    report = ingest_feed(local_store, FeedSource(feed_url), config=config, log=lambda _: None)

    assert report.error is not None and re.fullmatch(r"dropped by dialogue score -[\d.]+ < 0", report.error)
    assert report.outcomes == [] and keys(local_store) == [] and http_server.hits("/beats.mp3") == 0


def test_max_episodes_per_run_takes_the_newest_and_the_backlog_follows(
    local_store: ObjectStore, http_server: HTTPFixture, config: PodcastConfig
) -> None:
    config.max_episodes_per_run = 2
    urls = [http_server.route(f"/ep{i}.mp3", data, "audio/mpeg") for i, data in enumerate(AUDIO.values())]
    items = [{"title": f"ep{i}", "guid": f"g{i}", "url": u, "date": day(i + 1)} for i, u in enumerate(urls)]
    feed_url = http_server.route("/feed.xml", rss(items), "application/rss+xml")
    source = FeedSource(feed_url, id="backlog", language="en-GB")

    first = ingest_feed(local_store, source, config=config, log=lambda _: None)
    assert [o.url for o in first.outcomes if o.status == "new"] == [urls[2], urls[1]]
    second = ingest_feed(local_store, source, config=config, log=lambda _: None)
    assert [(o.url, o.status) for o in second.outcomes] == [(urls[2], "skipped"), (urls[1], "skipped"),
                                                            (urls[0], "new")]
    assert all(k.startswith("raw_audio/en/backlog/") for k in audio_keys(local_store))  # the list's language
