"""Object keys: derived, never raw, so a hostile name cannot escape its prefix and sources cannot collide."""

from __future__ import annotations

import re

import pytest

from emilia_pipe.keys import (
    UNKNOWN_LANGUAGE,
    episode_id_for_key,
    is_audio_key,
    join,
    language_of_raw_key,
    safe_language,
    segment_name,
    slug,
    source_of_raw_key,
)

SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
RAW = "raw_audio/"

HOSTILE = [
    "../../etc/passwd.mp3",
    "/etc/passwd.mp3",
    "raw_audio/en/src/../../../../root/.ssh/id_rsa.mp3",
    "raw_audio/en/src/..mp3",
    "raw_audio/en/src/.mp3",
    "raw_audio/en/src/...mp3",
    "raw_audio/en/src/-rf --no-preserve-root.mp3",
    "raw_audio/en/src/C:\\Windows\\evil.mp3",
    "raw_audio/en/src/nul\x00byte.mp3",
    "raw_audio/en/src/new\nline\r\ttab.mp3",
    "raw_audio/en/src/日本語のポッドキャスト 第1回.mp3",
    "raw_audio/en/src/Ünïcödé – épisode №1 🎙️.mp3",
    "raw_audio/en/src/" + "very-long-name " * 40 + ".mp3",
    "raw_audio/en/src/" + "x" * 5000 + ".mp3",
    "raw_audio/en/src/$(rm -rf ~);`id`|&;<>.mp3",
    "raw_audio/en/src/%2e%2e%2fetc.mp3",
    "",
    "/",
]


# --- slug ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Episode 12: The Return!", "Episode-12-The-Return"),
        ("already_safe-name", "already_safe-name"),
        ("  spaced   out  ", "spaced-out"),
        ("../../etc/passwd", "etc-passwd"),
        ("...", "x"),
        ("", "x"),
        ("---", "x"),
        ("日本語", "x"),
        ("café", "caf"),
    ],
)
def test_slug_examples(text: str, expected: str):
    assert slug(text) == expected


@pytest.mark.parametrize("text", [*HOSTILE, "-leading-dash", ".hidden", "_under", "a" * 500, "-" * 60 + "a"])
def test_slug_is_always_safe(text: str):
    s = slug(text)
    assert s
    assert re.fullmatch(r"[A-Za-z0-9_-]+", s)
    assert not s.startswith(("-", "."))
    assert len(s) <= 48


def test_slug_max_len():
    assert slug("a" * 100, max_len=10) == "a" * 10
    assert len(slug("word " * 100)) <= 48
    # truncation never leaves a trailing separator
    assert not slug("abcdefghi jklmnop", max_len=10).endswith("-")


# --- join ---------------------------------------------------------------------------------------------------


def test_join_basic():
    assert join("a", "b", "c.mp3") == "a/b/c.mp3"
    assert join("a/", "/b/", "c") == "a/b/c"
    assert join("a//b", "./c", ".") == "a/b/c"
    assert join("/abs/path") == "abs/path"
    assert join("a..b", "...", "c..") == "a..b/.../c.."
    assert join("") == ""


@pytest.mark.parametrize(
    "parts",
    [("..",), ("a", ".."), ("a/../b",), ("../x",), ("a", "b/../../c"), ("a\\b",), ("..\\x",), ("a\x00b",),
     ("ok", "bad\x00")],
)
def test_join_refuses_unsafe(parts: tuple[str, ...]):
    with pytest.raises(ValueError, match="unsafe"):
        join(*parts)


# --- episode ids --------------------------------------------------------------------------------------------


def test_episode_id_same_stem_two_sources_is_unique():
    a = episode_id_for_key("raw_audio/en/feed-a/ep1.mp3")
    b = episode_id_for_key("raw_audio/en/feed-b/ep1.mp3")
    c = episode_id_for_key("raw_audio/en/feed-a/ep1.m4a")
    assert len({a, b, c}) == 3
    assert a.startswith("ep1-") and b.startswith("ep1-")


def test_episode_id_is_stable():
    key = "raw_audio/en/feed-a/Episode 7 — Part 2.mp3"
    assert episode_id_for_key(key) == episode_id_for_key(key)
    # pinned: the id is stored in manifests and must not change between releases
    assert episode_id_for_key("raw_audio/en/feed-a/ep1.mp3") == "ep1-" + _sha("raw_audio/en/feed-a/ep1.mp3")


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


@pytest.mark.parametrize("key", HOSTILE)
def test_episode_id_is_safe_for_hostile_keys(key: str):
    eid = episode_id_for_key(key)
    assert SAFE.fullmatch(eid), eid
    assert "/" not in eid and ".." not in eid and "\\" not in eid and "\x00" not in eid
    assert len(eid) <= 48 + 1 + 10
    # usable as a key component and as a file name
    assert join("processed", eid, segment_name(eid, 3)) == f"processed/{eid}/{eid}_000003"


def test_episode_ids_of_hostile_keys_do_not_collide():
    ids = [episode_id_for_key(k) for k in HOSTILE]
    assert len(set(ids)) == len(ids)
    # two names that slug to the same text still differ by their hash
    a, b = episode_id_for_key("src/日本.mp3"), episode_id_for_key("src/中国.mp3")
    assert a != b and a.split("-")[0] == b.split("-")[0] == "x"


# --- language and source ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "lang"),
    [
        ("raw_audio/en/src/x.mp3", "en"),
        ("raw_audio/de/src/x.mp3", "de"),
        ("raw_audio/yue/src/x.mp3", "yue"),
        ("raw_audio/zh-Hans/src/x.mp3", "zh-Hans"),
        ("raw_audio/pt-BR/src/x.mp3", "pt-BR"),
        ("raw_audio/en/x.mp3", "en"),
        ("raw_audio/x.mp3", UNKNOWN_LANGUAGE),
        ("raw_audio/English/src/x.mp3", UNKNOWN_LANGUAGE),
        ("raw_audio/EN/src/x.mp3", UNKNOWN_LANGUAGE),
        ("raw_audio/e/src/x.mp3", UNKNOWN_LANGUAGE),
        ("raw_audio/../src/x.mp3", UNKNOWN_LANGUAGE),
        ("raw_audio/en_US/src/x.mp3", UNKNOWN_LANGUAGE),
        ("raw_audio//en/src/x.mp3", "en"),
        ("elsewhere/en/src/x.mp3", UNKNOWN_LANGUAGE),
    ],
)
def test_language_of_raw_key(key: str, lang: str):
    assert language_of_raw_key(key, RAW) == lang
    assert safe_language(lang) == lang


def test_language_with_prefix_without_slash():
    assert language_of_raw_key("raw_audio/en/src/x.mp3", "raw_audio") == "en"


@pytest.mark.parametrize("value", [None, "", "English", "../en", "en/us", "e", "toolong", "EN"])
def test_safe_language_rejects(value):
    assert safe_language(value) == UNKNOWN_LANGUAGE


def test_source_of_raw_key():
    assert source_of_raw_key("raw_audio/en/my feed/x.mp3", RAW) == "my-feed"
    assert source_of_raw_key("raw_audio/x.mp3", RAW) == "dropped"
    assert SAFE.fullmatch(source_of_raw_key("raw_audio/en/../../x.mp3", RAW))


# --- audio keys ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "audio"),
    [
        ("raw_audio/en/src/x.mp3", True),
        ("raw_audio/en/src/x.M4A", True),
        ("raw_audio/en/src/x.Mp3", True),
        ("raw_audio/en/src/x.flac", True),
        ("raw_audio/en/src/x.opus", True),
        ("raw_audio/en/src/x.webm", True),
        ("raw_audio/en/src/x.tar.mp3", True),
        ("raw_audio/en/src/x.mp3.json", False),
        ("raw_audio/en/src/x.json", False),
        ("raw_audio/en/src/x.info.json", False),
        ("raw_audio/en/src/.x.mp3", False),
        ("raw_audio/en/src/._x.mp3", False),
        ("raw_audio/en/src/.DS_Store", False),
        ("raw_audio/en/src/.tmp-abc.mp3", False),
        ("raw_audio/en/src/x.mp3.part", False),
        ("raw_audio/en/src/x", False),
        ("raw_audio/en/src/mp3", False),
        ("raw_audio/en/src/.mp3", False),
        ("", False),
    ],
)
def test_is_audio_key(key: str, audio: bool):
    assert is_audio_key(key) is audio


def test_segment_name():
    assert segment_name("ep1-abc", 0) == "ep1-abc_000000"
    assert segment_name("ep1-abc", 123456) == "ep1-abc_123456"
