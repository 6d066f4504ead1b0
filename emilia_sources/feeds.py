"""Podcast feeds: parse RSS 2.0 + iTunes with feedparser, judge whether a feed is speech, read feed lists.

Parsing is separated from fetching (`parse_feed` takes bytes) so a feed's handling is testable without a network and
the downloader's caps and politeness apply to feeds as well as to episodes.

The dialogue score exists because catalogues such as podcastindex list millions of "podcasts" of which a sizeable part
is music mixes, sleep sounds and ASMR: hours that would cost GPU time in the Emilia pipe only to be thrown away by VAD
and DNSMOS. The score is a cheap, explainable filter on metadata (categories and keywords), tuned to keep anything
plausibly spoken: a feed with no signal either way passes, only a net-negative one is dropped.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import feedparser


class FeedError(Exception):
    """A feed that cannot be used (not XML, not RSS/Atom), with the reason for the ingest report."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class Entry:
    guid: str | None
    title: str
    enclosure_url: str | None
    enclosure_type: str | None
    enclosure_length: int | None  # as declared by the feed; often 0 or wrong, never trusted for caps
    published: str | None  # ISO 8601 in UTC
    duration_s: float | None  # itunes:duration as declared
    link: str | None
    explicit: bool | None
    description: str = ""


@dataclass(frozen=True)
class Feed:
    url: str
    title: str
    language: str | None  # primary subtag, lower case ('en' for 'en-US'), None when absent or unreadable
    categories: list[str]
    explicit: bool | None
    author: str | None
    description: str
    link: str | None
    entries: list[Entry]
    rights: str | None = None  # the channel's <copyright>: the licence the release states for the feed


@dataclass(frozen=True)
class FeedSource:
    """One line of a feed list: the URL plus what the catalogue already knows about it."""

    url: str
    id: str | None = None
    language: str | None = None
    categories: list[str] = field(default_factory=list)
    episode_count: int | None = None


_LANG = re.compile(r"^([a-zA-Z]{2,3})(?:[-_][A-Za-z0-9]{1,8})*$")


def normalize_language(value: str | None) -> str | None:
    """'en-US', 'EN_gb', ' en ' -> 'en'; anything that is not a language tag -> None."""
    if not value:
        return None
    m = _LANG.match(value.strip())
    return m.group(1).lower() if m else None


def parse_duration(value: Any) -> float | None:
    """itunes:duration as seconds: 'HH:MM:SS', 'MM:SS', '3600' or '3600.5'; None when unreadable."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    parts = text.split(":")
    if len(parts) > 3:
        return None
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        return None
    if any(n < 0 for n in nums):
        return None
    seconds = 0.0
    for n in nums:
        seconds = seconds * 60 + n
    return seconds


_EXPLICIT_TAG = re.compile(rb"<itunes:explicit>\s*([^<]*?)\s*</itunes:explicit>", re.IGNORECASE)
_ITEM_START = re.compile(rb"<item[\s>]", re.IGNORECASE)


def _explicit_word(raw: bytes) -> bool | None:
    word = raw.decode("utf-8", "replace").strip().lower()
    if word in ("yes", "true", "explicit"):
        return True
    if word in ("no", "false", "clean"):
        return False
    return None


def _raw_explicit(content: bytes) -> tuple[bool | None, list[bool | None]]:
    """The channel's and each item's itunes:explicit, read from the bytes.

    feedparser 6 maps only 'yes'/'clean' and loses 'true'/'false', the values Apple's current spec asks for.
    """
    pieces = _ITEM_START.split(content)
    m = _EXPLICIT_TAG.search(pieces[0])
    channel = _explicit_word(m.group(1)) if m else None
    items = []
    for piece in pieces[1:]:
        m = _EXPLICIT_TAG.search(piece)
        items.append(_explicit_word(m.group(1)) if m else None)
    return channel, items


def _iso(parsed: Any) -> str | None:
    if not parsed:
        return None
    try:
        return datetime(*parsed[:6], tzinfo=UTC).isoformat()
    except (TypeError, ValueError):
        return None


def _enclosure(entry: Any, feed_url: str) -> tuple[str | None, str | None, int | None]:
    """The first enclosure: feedparser lists them in `enclosures` (RSS) or as rel=enclosure links (Atom).

    A relative URL is resolved against the feed's URL (feedparser leaves enclosure hrefs as written).
    """
    candidates = list(entry.get("enclosures") or []) + [
        link for link in entry.get("links") or [] if link.get("rel") == "enclosure"
    ]
    for enc in candidates:
        href = (enc.get("href") or enc.get("url") or "").strip()
        if href:
            length = str(enc.get("length") or "").strip()
            return urljoin(feed_url, href), (enc.get("type") or None), (int(length) if length.isdigit() else None)
    return None, None, None


def parse_feed(content: bytes, url: str) -> Feed:
    """RSS 2.0 / Atom with the iTunes namespace -> `Feed`; raises `FeedError` for what is not a feed at all.

    A feed with recoverable problems (feedparser's "bozo" with entries that carry media, e.g. a wrong declared
    encoding) is accepted: hosts serve plenty of those and their episodes are fine. Broken XML with nothing usable is
    a `FeedError`.
    """
    # The content-type header keeps feedparser from flagging every byte string as "no Content-type specified";
    # content-location resolves relative enclosure URLs against the feed's own URL.
    parsed = feedparser.parse(
        content, response_headers={"content-location": url, "content-type": "application/xml"}
    )
    meta = parsed.get("feed") or {}
    usable = [e for e in parsed.get("entries") or [] if e.get("enclosures") or e.get("links")]
    if parsed.get("bozo") and not usable:
        why = parsed.get("bozo_exception")
        raise FeedError(url, f"malformed XML: {why}" if why else "malformed XML")
    if not parsed.get("version"):
        raise FeedError(url, "not an RSS or Atom feed")
    channel_explicit, item_explicit = _raw_explicit(content)
    if len(item_explicit) != len(parsed.entries):
        item_explicit = [None] * len(parsed.entries)  # an Atom feed or odd markup: keep feedparser's reading

    categories: list[str] = []
    for tag in meta.get("tags") or []:
        term = (tag.get("term") or tag.get("label") or "").strip()
        if term and term.lower() not in (c.lower() for c in categories):
            categories.append(term)

    entries = []
    for e, raw_explicit in zip(parsed.entries, item_explicit, strict=True):
        enc_url, enc_type, enc_len = _enclosure(e, url)
        explicit = raw_explicit if raw_explicit is not None else e.get("itunes_explicit")
        entries.append(
            Entry(
                guid=(e.get("id") or "").strip() or None,
                title=(e.get("title") or "").strip(),
                enclosure_url=enc_url,
                enclosure_type=enc_type,
                enclosure_length=enc_len,
                published=_iso(e.get("published_parsed") or e.get("updated_parsed")),
                duration_s=parse_duration(e.get("itunes_duration")),
                link=e.get("link") or None,
                explicit=explicit if isinstance(explicit, bool) else None,
                description=(e.get("summary") or "").strip(),
            )
        )
    feed_explicit = channel_explicit if channel_explicit is not None else meta.get("itunes_explicit")
    return Feed(
        url=url,
        title=(meta.get("title") or "").strip(),
        language=normalize_language(meta.get("language")),
        categories=categories,
        explicit=feed_explicit if isinstance(feed_explicit, bool) else None,
        author=(meta.get("author") or meta.get("itunes_author") or "").strip() or None,
        description=(meta.get("summary") or meta.get("subtitle") or "").strip(),
        link=meta.get("link") or None,
        entries=entries,
        rights=(meta.get("rights") or "").strip() or None,
    )


def _default_categories() -> dict[str, float]:
    return {
        # spoken formats
        "news": 1.0,
        "talk": 1.0,
        "interviews": 1.0,
        "society & culture": 1.0,
        "education": 1.0,
        "comedy": 0.5,
        "business": 0.5,
        "history": 1.0,
        "technology": 0.5,
        "true crime": 1.0,
        "sports": 0.5,
        "sports talk": 1.0,
        "politics": 1.0,
        "documentary": 0.5,
        # not speech, or not conversational speech
        "music": -1.0,
        "asmr": -2.0,
        "sleep": -2.0,
        "meditation": -1.0,
        "white noise": -2.0,
        "ambient": -1.5,
        "soundscape": -1.5,
        "rain sounds": -2.0,
    }


def _default_keywords() -> dict[str, float]:
    return {
        "interview": 0.5,
        "conversation": 0.5,
        "discussion": 0.5,
        "debate": 0.5,
        "talk": 0.5,
        "talk show": 0.5,
        "panel": 0.5,
        "roundtable": 0.5,
        "q&a": 0.5,
        "guest": 0.5,
        "news": 0.5,
        "lofi": -1.0,
        "lo-fi": -1.0,
        "beats": -0.5,
        "dj": -0.5,
        "mix": -0.5,
        "playlist": -0.5,
        "instrumental": -1.0,
        "asmr": -1.5,
        "sleep": -1.0,
        "meditation": -0.5,
        "white noise": -1.5,
        "rain sounds": -1.5,
        "nature sounds": -1.5,
        "binaural": -1.0,
        "ambient": -1.0,
        "soundscape": -1.0,
        "relaxing music": -1.0,
    }


@dataclass
class DialogueWeights:
    """How much each iTunes category and each keyword (title, description, categories) says "people talking".

    Each phrase counts once per feed however often it occurs, so a title cannot stuff its way in. Matching is on word
    boundaries with an optional plural ('interview' matches 'Interviews'). A feed is kept when its score is at least
    `threshold`: with 0.0 a feed without any signal passes, and a net "music/sleep" feed is dropped.
    """

    categories: dict[str, float] = field(default_factory=_default_categories)
    keywords: dict[str, float] = field(default_factory=_default_keywords)
    threshold: float = 0.0


@functools.lru_cache(maxsize=1024)
def _phrase(text: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![a-z0-9]){re.escape(text.lower())}(?:s|es)?(?![a-z0-9])")


def dialogue_score(feed: Feed, weights: DialogueWeights | None = None) -> float:
    """Sum of the weights of the categories and keywords the feed matches (see `DialogueWeights`)."""
    weights = weights or DialogueWeights()
    cats = [c.lower() for c in feed.categories]
    score = 0.0
    for name, w in weights.categories.items():
        pat = _phrase(name)
        if any(pat.search(c) for c in cats):
            score += w
    text = " ".join([feed.title, feed.description, *cats]).lower()
    for word, w in weights.keywords.items():
        if _phrase(word).search(text):
            score += w
    return round(score, 3)


def keeps(feed: Feed, weights: DialogueWeights | None = None) -> bool:
    weights = weights or DialogueWeights()
    return dialogue_score(feed, weights) >= weights.threshold


_SPLIT_CATEGORIES = re.compile(r"\s*[,;|]\s*")


def _categories(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    return [c for c in _SPLIT_CATEGORIES.split(str(value).strip()) if c]


def _int_or_none(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def load_feed_list(path: str | Path) -> list[FeedSource]:
    """Feed URLs from a .txt (one per line, `#` comments), .csv or .parquet (podcastindex-style columns).

    Tables need a `url` column; `id`, `language`, `categories` (a list, or text split on , ; |), `episodeCount` and
    podcastindex's `category1`..`category10` are used when present. Blank URLs are skipped and a URL listed twice
    is kept once (the first row wins), since two partitions for one feed would download it twice.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]]
    if suffix == ".txt":
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append({"url": line})
    elif suffix in (".csv", ".parquet"):
        import polars as pl

        df = pl.read_csv(path, infer_schema=False) if suffix == ".csv" else pl.read_parquet(path)
        if "url" not in df.columns:
            raise ValueError(f"{path}: a feed list needs a 'url' column (has {df.columns})")
        rows = df.to_dicts()
    else:
        raise ValueError(f"{path}: feed lists are .txt, .csv or .parquet, not {suffix or 'no extension'!r}")

    out: list[FeedSource] = []
    seen: set[str] = set()
    for row in rows:
        url = str(row.get("url") or "").strip()
        if not url or url in seen:
            continue
        seen.add(url)
        cats = _categories(row.get("categories"))
        for i in range(1, 11):
            cats += [c for c in _categories(row.get(f"category{i}")) if c not in cats]
        raw_id = row.get("id")
        out.append(
            FeedSource(
                url=url,
                id=str(raw_id).strip() if raw_id is not None and str(raw_id).strip() else None,
                language=normalize_language(row.get("language")),
                categories=cats,
                episode_count=_int_or_none(row.get("episodeCount", row.get("episode_count"))),
            )
        )
    return out
