"""Feed parsing (RSS 2.0 + iTunes), the dialogue score, and feed lists from txt/csv/parquet."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from emilia_sources.feeds import (
    DialogueWeights,
    Feed,
    FeedError,
    FeedSource,
    dialogue_score,
    keeps,
    load_feed_list,
    normalize_language,
    parse_duration,
    parse_feed,
)

FEED_URL = "https://talk.example.org/feed.xml"

TALK_RSS = b"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd">
<channel>
  <title>The Morning Conversation</title>
  <link>https://talk.example.org/</link>
  <description>Daily interviews with the people behind the news.</description>
  <language>en-US</language>
  <itunes:author>Jane Host</itunes:author>
  <itunes:explicit>false</itunes:explicit>
  <category>Interviews</category>
  <itunes:category text="Society &amp; Culture"><itunes:category text="Documentary"/></itunes:category>
  <itunes:category text="News"><itunes:category text="Daily News"/></itunes:category>
  <item>
    <title>Episode 2: ../../etc/passwd</title>
    <guid isPermaLink="false">/abs/../../guid-2</guid>
    <link>https://talk.example.org/ep2</link>
    <enclosure url="https://cdn.example.org/ep2.mp3" type="audio/mpeg" length="271364"/>
    <pubDate>Tue, 02 Jan 2024 10:00:00 +0200</pubDate>
    <itunes:duration>1:02:03</itunes:duration>
    <itunes:explicit>true</itunes:explicit>
  </item>
  <item>
    <title>Episode 1</title>
    <guid>https://talk.example.org/ep1</guid>
    <enclosure url="/media/ep1.m4a" type="audio/x-m4a" length="0"/>
    <pubDate>Mon, 01 Jan 2024 08:00:00 GMT</pubDate>
    <itunes:duration>42:07</itunes:duration>
  </item>
  <item>
    <title>A blog post without audio</title>
    <itunes:duration>900</itunes:duration>
  </item>
</channel>
</rss>"""


def music_feed() -> Feed:
    return Feed(url="https://m.example.org/rss", title="lofi beats to sleep", language="en", categories=["Music"],
                explicit=None, author=None, description="Chill lofi beats to relax, study and sleep to.", link=None,
                entries=[])


def test_parse_feed_reads_channel_and_items() -> None:
    feed = parse_feed(TALK_RSS, FEED_URL)
    assert feed.title == "The Morning Conversation"
    assert feed.language == "en"
    assert feed.categories == ["Interviews", "Society & Culture", "Documentary", "News", "Daily News"]
    assert feed.explicit is False and feed.author == "Jane Host"
    assert [e.title for e in feed.entries] == ["Episode 2: ../../etc/passwd", "Episode 1", "A blog post without audio"]
    ep2, ep1, post = feed.entries
    assert ep2.guid == "/abs/../../guid-2" and ep2.link == "https://talk.example.org/ep2"
    assert (ep2.enclosure_url, ep2.enclosure_type, ep2.enclosure_length) == (
        "https://cdn.example.org/ep2.mp3", "audio/mpeg", 271364)
    assert ep2.published == "2024-01-02T08:00:00+00:00"  # normalized to UTC
    assert ep2.duration_s == 3723 and ep2.explicit is True
    assert ep1.enclosure_url == "https://talk.example.org/media/ep1.m4a"  # relative to the feed's URL
    assert ep1.duration_s == 42 * 60 + 7 and ep1.explicit is None and ep1.enclosure_length == 0
    assert post.enclosure_url is None and post.published is None and post.duration_s == 900


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1:02:03", 3723), ("02:03", 123), ("3600", 3600), ("61.5", 61.5), (" 10:00 ", 600), (1800, 1800),
     ("", None), (None, None), ("abc", None), ("1:2:3:4", None), ("-5", None), ("12 min", None)],
)
def test_parse_duration(value: object, seconds: float | None) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "lang"),
    [("en-US", "en"), ("EN_gb", "en"), ("de", "de"), ("fil", "fil"), ("pt-BR", "pt"), (" fr ", "fr"),
     ("English", None), ("", None), (None, None), ("en-", None)],
)
def test_normalize_language(value: str | None, lang: str | None) -> None:
    assert normalize_language(value) == lang


@pytest.mark.parametrize(
    "content",
    [
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>Broken</ti',
        b"<html><body><h1>Welcome to our podcast!</h1></body></html>",
        b'{"error": "not found"}',
        b"",
    ],
    ids=["truncated-xml", "html", "json", "empty"],
)
def test_not_a_feed_raises_feed_error(content: bytes) -> None:
    with pytest.raises(FeedError) as err:
        parse_feed(content, FEED_URL)
    assert err.value.url == FEED_URL
    assert "malformed XML" in err.value.reason or "not an RSS or Atom feed" in err.value.reason


def test_feed_with_recoverable_problems_is_kept() -> None:
    # an undeclared entity: feedparser flags the feed (bozo) but still reads its items, as podcast apps do
    content = TALK_RSS.replace(b"Daily interviews", b"Daily&nbsp;interviews")
    feed = parse_feed(content, FEED_URL)
    assert len(feed.entries) == 3


def test_empty_feed_is_a_feed() -> None:
    feed = parse_feed(b'<rss version="2.0"><channel><title>New show</title></channel></rss>', FEED_URL)
    assert feed.title == "New show" and feed.entries == [] and feed.language is None


def test_dialogue_score_keeps_talk_and_drops_music() -> None:
    talk = parse_feed(TALK_RSS, FEED_URL)
    music = music_feed()
    assert dialogue_score(talk) > 0 > dialogue_score(music)
    assert keeps(talk) and not keeps(music)


def test_dialogue_score_neutral_feed_passes_and_weights_are_configurable() -> None:
    neutral = Feed(url="u", title="Untitled", language=None, categories=[], explicit=None, author=None,
                   description="", link=None, entries=[])
    assert dialogue_score(neutral) == 0.0 and keeps(neutral)
    strict = DialogueWeights(threshold=0.5)
    assert not keeps(neutral, strict)
    custom = DialogueWeights(categories={"music": 5.0}, keywords={}, threshold=1.0)
    assert dialogue_score(music_feed(), custom) == 5.0 and keeps(music_feed(), custom)


def test_dialogue_score_counts_each_phrase_once_on_word_boundaries() -> None:
    w = DialogueWeights(categories={}, keywords={"interview": 1.0, "mix": -1.0})
    spam = Feed(url="u", title="Interview interview INTERVIEWS", language=None, categories=[], explicit=None,
                author=None, description="mixed feelings, remixed", link=None, entries=[])
    assert dialogue_score(spam, w) == 1.0  # "mixed"/"remixed" are not "mix"
    # talk about music is still talk: iTunes' "Music Interviews" nets out non-negative
    music_talk = Feed(url="u", title="Backstage", language=None, categories=["Music", "Music Interviews"],
                      explicit=None, author=None, description="", link=None, entries=[])
    assert keeps(music_talk)


def test_load_feed_list_txt(tmp_path: Path) -> None:
    path = tmp_path / "feeds.txt"
    path.write_text("# my feeds\nhttps://a.example.org/rss\n\n  https://b.example.org/feed.xml  \n"
                    "# https://commented.example.org/rss\nhttps://a.example.org/rss\n")
    assert load_feed_list(path) == [FeedSource("https://a.example.org/rss"), FeedSource("https://b.example.org/feed.xml")]


def test_load_feed_list_csv_podcastindex_columns(tmp_path: Path) -> None:
    path = tmp_path / "feeds.csv"
    path.write_text(
        "id,url,title,language,episodeCount,category1,category2,categories\n"
        "920666,https://a.example.org/rss,A,en-US,412,News,Politics,\n"
        ",https://b.example.org/rss,B,,,,,\"Comedy, Interviews\"\n"
        "77,,no url,,,,,\n"
    )
    a, b = load_feed_list(path)
    assert a == FeedSource("https://a.example.org/rss", "920666", "en", ["News", "Politics"], 412)
    assert b == FeedSource("https://b.example.org/rss", None, None, ["Comedy", "Interviews"], None)


def test_load_feed_list_parquet(tmp_path: Path) -> None:
    path = tmp_path / "feeds.parquet"
    pl.DataFrame({
        "url": ["https://a.example.org/rss", "https://b.example.org/rss"],
        "id": [1, 2],
        "language": ["de-DE", None],
        "categories": [["Society & Culture"], []],
        "episodeCount": [10, None],
    }).write_parquet(path)
    assert load_feed_list(path) == [
        FeedSource("https://a.example.org/rss", "1", "de", ["Society & Culture"], 10),
        FeedSource("https://b.example.org/rss", "2", None, [], None),
    ]
    only_url = tmp_path / "urls.parquet"
    pl.DataFrame({"url": ["https://c.example.org/rss"]}).write_parquet(only_url)
    assert load_feed_list(only_url) == [FeedSource("https://c.example.org/rss")]


def test_load_feed_list_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "feeds.csv").write_text("link,title\nhttps://a.example.org/rss,A\n")
    with pytest.raises(ValueError, match="'url' column"):
        load_feed_list(tmp_path / "feeds.csv")
    (tmp_path / "feeds.json").write_text("[]")
    with pytest.raises(ValueError, match=r"\.txt, \.csv or \.parquet"):
        load_feed_list(tmp_path / "feeds.json")
