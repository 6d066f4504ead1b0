"""Download one URL to a local file, politely and defensively: the only way bytes from the internet enter the store.

Podcast hosts are slow, flaky and sometimes hostile, so this module assumes the worst:

- the file is streamed to `<dest>.part` and renamed to `dest` only once it is complete and checked, so a crash, a
  refusal or a dropped connection never leaves something at `dest` that looks like an episode;
- a connection dropped halfway is resumed with `Range` when the server honours it (206 from the right offset), and
  restarted from zero otherwise: a 2 GB episode is not fetched twice because of one reset;
- connection errors, 5xx and 429 are retried with exponential backoff (`Retry-After` wins when the server sends it);
  4xx are final, since asking again gets the same answer;
- size caps are enforced twice: from `Content-Length` before any byte is read, and while streaming (the header may
  be missing or lie);
- "audio" is checked twice: the Content-Type must be one an audio file may carry, and the first bytes must be a
  known container's magic. Hosts answer dead enclosures with an HTML page and a 200, and the extension in the URL
  says nothing (`.../download?id=3`), so the extension returned comes from the magic bytes;
- only public addresses are reached (`address_guard`): every connection, on every redirect hop and retry, is
  checked on the address it actually connects to, and redirects are followed here, hop by hop, so a hop to another
  scheme or a refused address is reported with the hop's URL.
"""

from __future__ import annotations

import email.utils
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from emilia_sources.address_guard import AddressPolicy, AddressRefused, guarded_session, session_policy

USER_AGENT = "EmiliaForge/0.1 (TTS dataset builder; +https://github.com/emilia-forge)"
MAX_REDIRECTS = 10
MAX_RETRY_AFTER_S = 120.0  # a server asking for more than this is treated as down: we do not hold a worker for hours
CHUNK = 64 * 1024  # the most one read returns; reads return what has arrived, so a drop loses nothing already read
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAGIC_LEN = 64  # enough for every signature below, including OpusHead inside the first Ogg page

AUDIO_TYPES = frozenset(
    {"video/mp4", "video/webm", "application/octet-stream", "binary/octet-stream", "application/ogg", "application/mp4"}
)
FEED_TYPE_SUFFIXES = ("/xml", "+xml")  # application/xml, text/xml, application/rss+xml, application/atom+xml
FEED_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
ACCEPT_HEADERS = {
    "audio": "audio/*, video/mp4;q=0.9, video/webm;q=0.9, application/octet-stream;q=0.5, */*;q=0.1",
    "feed": "application/rss+xml, application/atom+xml;q=0.9, application/xml;q=0.8, text/xml;q=0.8, */*;q=0.1",
}


class DownloadError(Exception):
    """A download that did not produce a file, with a reason a human can act on (it goes into the ingest report)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class _Retryable(Exception):
    """Internal: this attempt failed in a way another attempt may fix (5xx, 429, reset, timeout)."""

    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


@dataclass(frozen=True)
class Downloaded:
    path: Path
    bytes: int
    content_type: str
    final_url: str
    ext: str  # from the magic bytes ("mp3", "m4a", ...), or "xml" for feeds; never from the URL


class HostThrottle:
    """Per-host politeness: two requests to the same host start at least `min_interval_s` apart.

    Each caller reserves the next free slot of its host under a lock and sleeps outside it, so threads talking to
    different hosts never wait for each other, and threads sharing a host are spaced out instead of all waking at once.
    One instance should be shared by everything that talks to the same hosts (feeds and enclosures often share a CDN).
    """

    def __init__(self, min_interval_s: float):
        self.min_interval_s = max(0.0, float(min_interval_s))
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, url: str) -> float:
        """Block until a request to the URL's host may start; returns the seconds waited."""
        host = (urlsplit(url).hostname or "").lower()
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(host, 0.0))
            self._next[host] = slot + self.min_interval_s
        delay = slot - now
        if delay > 0:
            time.sleep(delay)
        return delay


def sniff(head: bytes) -> str | None:
    """The file extension a known container's first bytes announce, else None."""
    if head.startswith(b"ID3"):
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        if head[1] & 0xF6 == 0xF0:  # layer bits 00: ADTS AAC shares the 11-bit sync with MPEG audio
            return "aac"
        return "mp3"
    if head[4:8] == b"ftyp":
        return "m4a" if head[8:11] in (b"M4A", b"M4B", b"M4P") else "mp4"
    if head.startswith(b"OggS"):
        return "opus" if b"OpusHead" in head[:MAGIC_LEN] else "ogg"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    return None


def _looks_like_feed(head: bytes) -> bool:
    """XML, and not an HTML page (what a dead feed URL usually answers with)."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not text.startswith(b"<"):
        return False
    return not (text.startswith(b"<!doctype html") or text.startswith(b"<html"))


def _type_allowed(content_type: str, accept: str) -> bool:
    if not content_type:
        return True  # many CDNs send none; the magic bytes decide
    if accept == "audio":
        return content_type.startswith("audio/") or content_type in AUDIO_TYPES
    if content_type == "text/html":
        return False
    return content_type.startswith("text/") or content_type.endswith(FEED_TYPE_SUFFIXES) or content_type in FEED_TYPES


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """(start, total) from `bytes <start>-<end>/<total|*>`."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        span, _, total = value[6:].partition("/")
        start = int(span.split("-", 1)[0])
        return start, (None if total.strip() == "*" else int(total))
    except ValueError:
        return None


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 2**20:
        return f"{n / 1024:.1f} KiB"
    if n < 2**30:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**30:.2f} GiB"


class _State:
    """What survives between attempts of one download: how much of `.part` is good and what it is."""

    def __init__(self) -> None:
        self.have = 0  # bytes in .part that came from a consistent response
        self.validator: str | None = None  # ETag or Last-Modified of that response, for If-Range
        self.ranges_ok = True  # False once the server showed it does not honour ranges
        self.ext: str | None = None
        self.content_type = ""
        self.final_url = ""


def download(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    accept: str = "audio",
    session: requests.Session | None = None,
    retries: int = 4,
    backoff_s: float = 0.5,
    timeout_s: float = 30,
    throttle: HostThrottle | None = None,
    policy: AddressPolicy | None = None,
) -> Downloaded:
    """Fetch `url` into `dest` (complete and checked, or not at all); `accept` is "audio" or "feed".

    The destinations allowed are `policy`'s, or those of a `session` made by `guarded_session` (reused across
    downloads for its connection pool); with neither, `AddressPolicy.from_env()` (public addresses plus
    INGEST_ALLOW_HOSTS). Any other session is a ValueError: it would bypass the address guard.

    Raises `DownloadError(url, reason)`; on any failure neither `dest` nor `<dest>.part` is left behind (an existing
    `dest` from an earlier call is left untouched).
    """
    if accept not in ("audio", "feed"):
        raise ValueError(f"accept must be 'audio' or 'feed', not {accept!r}")
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(url, f"unsupported URL scheme {scheme or '(none)'!r}: only http and https are fetched")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    part.unlink(missing_ok=True)  # a leftover from a killed process has no validator we could trust
    own_session = session is None
    if session is None:
        session = guarded_session(policy or AddressPolicy.from_env())
    elif policy is not None:
        raise ValueError("download() takes a policy or a guarded session, not both")
    elif session_policy(session) is None:
        raise ValueError("download() needs a session made by address_guard.guarded_session(): another would bypass "
                         "the address guard")
    state = _State()
    try:
        attempt = 0
        while True:
            try:
                _attempt(session, url, part, state, max_bytes=max_bytes, accept=accept, timeout_s=timeout_s,
                         throttle=throttle)
                break
            except _Retryable as err:
                if attempt >= retries:
                    raise DownloadError(url, f"{err.reason} (gave up after {attempt + 1} attempts)") from None
                wait = backoff_s * 2**attempt
                if err.wait_s is not None:
                    if err.wait_s > MAX_RETRY_AFTER_S:
                        raise DownloadError(
                            url, f"{err.reason}; server asks to retry after {err.wait_s:.0f} s, longer than we wait"
                        ) from None
                    wait = max(wait, err.wait_s)
                attempt += 1
                time.sleep(wait)
        size = part.stat().st_size
        if size == 0:
            raise DownloadError(url, "empty response (0 bytes)")
        if state.ext is None:  # a body shorter than the magic buffer never went through the check in _attempt
            with part.open("rb") as fh:
                state.ext = _check_head(url, fh.read(MAGIC_LEN), accept, final=True)
        os.replace(part, dest)
        return Downloaded(dest, size, state.content_type, state.final_url or url, state.ext)
    finally:
        part.unlink(missing_ok=True)
        if own_session:
            session.close()


def _check_head(url: str, head: bytes, accept: str, final: bool) -> str | None:
    """The extension the first bytes announce; raises DownloadError when they are not what `accept` wants.

    With `final` False and fewer than MAGIC_LEN bytes seen, returns None to ask for more bytes.
    """
    if not final and len(head) < MAGIC_LEN:
        return None
    if accept == "feed":
        if not _looks_like_feed(head):
            raise DownloadError(url, f"not a feed: content starts with {head[:24]!r}")
        return "xml"
    ext = sniff(head)
    if ext is None:
        raise DownloadError(url, f"not audio: content starts with {head[:24]!r}, no known audio container")
    return ext


def _attempt(
    session: requests.Session,
    url: str,
    part: Path,
    state: _State,
    *,
    max_bytes: int,
    accept: str,
    timeout_s: float,
    throttle: HostThrottle | None,
) -> None:
    """One request: appends to `.part` from `state.have` (206) or rewrites it from zero (200)."""
    headers = {"User-Agent": USER_AGENT, "Accept": ACCEPT_HEADERS[accept]}
    if accept == "audio":
        headers["Accept-Encoding"] = "identity"  # byte offsets must be offsets into the file itself
    resuming = state.have > 0 and state.ranges_ok
    if resuming:
        headers["Range"] = f"bytes={state.have}-"
        if state.validator:
            headers["If-Range"] = state.validator
    resp, final_url = _get_following_redirects(session, url, headers, timeout_s, throttle)
    with resp:
        status = resp.status_code
        if status == 429 or status >= 500:
            reason = f"HTTP {status} {resp.reason or ''}".strip()
            raise _Retryable(reason, _retry_after(resp.headers.get("Retry-After")))
        if status == 416 and resuming:  # our offset is past what the server has now: start over
            state.have, state.ranges_ok = 0, False
            raise _Retryable("HTTP 416 on resume; restarting from zero", 0.0)
        if status >= 400:
            raise DownloadError(url, f"HTTP {status} {resp.reason or ''}".strip())
        if status not in (200, 206):
            raise DownloadError(url, f"unexpected HTTP {status} {resp.reason or ''}".strip())

        content_type = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if not _type_allowed(content_type, accept):
            what = "not audio" if accept == "audio" else "not a feed"
            raise DownloadError(url, f"{what}: server sent Content-Type {content_type!r}")
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")

        offset = 0
        if status == 206 and resuming:
            rng = _content_range(resp.headers.get("Content-Range"))
            if rng is None or rng[0] != state.have:
                # a range we did not ask for: drop it and the partial file, and never ask for ranges again
                state.have, state.ranges_ok = 0, False
                raise _Retryable(f"server answered the resume with range {resp.headers.get('Content-Range')!r}", 0.0)
            offset = state.have
            total = rng[1]
        elif status == 206:
            raise DownloadError(url, "server sent a partial response to a request without Range")
        else:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() and not encoded else None
            if resuming:
                state.ranges_ok = False  # 200 to a Range request: the server ignores ranges (or the file changed)
        if total is not None and total > max_bytes:
            raise DownloadError(url, f"too large: {_size(total)} announced, the cap is {_size(max_bytes)}")

        if offset == 0:
            state.content_type = content_type
            state.final_url = final_url
            etag = resp.headers.get("ETag", "")  # a weak ETag may not be used in If-Range (RFC 9110 13.1.5)
            strong = etag if etag and not etag.startswith("W/") else None
            state.validator = strong or resp.headers.get("Last-Modified")
            state.ext = None
            if resp.headers.get("Accept-Ranges", "").lower() == "none" or encoded:
                state.ranges_ok = False
        state.have = offset
        _stream(resp, url, part, state, offset=offset, max_bytes=max_bytes, accept=accept)
        if total is not None and state.have < total:
            raise _Retryable(f"connection closed at {_size(state.have)} of {_size(total)}", 0.0)


def _get_following_redirects(
    session: requests.Session, url: str, headers: dict[str, str], timeout_s: float, throttle: HostThrottle | None
) -> tuple[requests.Response, str]:
    """GET `url`, following redirects hop by hop; returns the final response (open, streaming) and its URL.

    Each hop is its own request: the guarded session checks the address it connects to, this loop refuses a hop
    to another scheme, and a refusal names the hop. Every hop waits for its host's throttle slot.
    """
    current = url
    for hop in range(MAX_REDIRECTS + 1):
        if throttle is not None:
            throttle.wait(current)
        try:
            resp = session.get(current, stream=True, timeout=timeout_s, headers=headers, allow_redirects=False)
        except AddressRefused as err:
            where = f"redirect to {current}: " if hop else ""
            raise DownloadError(url, str(err).replace("refused: ", f"refused: {where}", 1)) from None
        except requests.exceptions.SSLError as err:  # a bad certificate stays bad: no retry
            raise DownloadError(url, f"TLS error: {err}") from None
        except (requests.ConnectionError, requests.Timeout) as err:
            raise _Retryable(f"connection failed: {type(err).__name__}") from None
        except requests.RequestException as err:
            raise DownloadError(url, f"request failed: {type(err).__name__}: {err}") from None
        location = resp.headers.get("Location")
        if resp.status_code not in REDIRECT_STATUSES or not location:
            return resp, current
        resp.close()
        current = urljoin(current, location.strip())
        scheme = urlsplit(current).scheme.lower()
        if scheme not in ("http", "https"):
            raise DownloadError(url, f"redirect to unsupported URL scheme {scheme or '(none)'!r}: {current}")
    raise DownloadError(url, f"redirect loop or too many redirects (more than {MAX_REDIRECTS})")


def _stream(
    resp: requests.Response, url: str, part: Path, state: _State, *, offset: int, max_bytes: int, accept: str
) -> None:
    """Body into `.part`; `state.have` tracks what is on disk so a drop can resume from exactly there.

    `read1` returns whatever has arrived (at most CHUNK bytes) instead of waiting for a full chunk, so the bytes of a
    connection that drops mid-read are already on disk and counted: the reason reports what was received and the
    resume starts from there.
    """
    # a drop inside the first MAGIC_LEN bytes leaves the check undone: it continues with what is already on disk
    head = part.read_bytes()[:offset] if offset and state.ext is None else b""
    with part.open("r+b" if offset else "wb") as fh:
        fh.seek(offset)
        fh.truncate()
        while chunk := _read(resp, url, fh, state):
            if state.have + len(chunk) > max_bytes:
                raise DownloadError(url, f"too large: the stream went past the cap of {_size(max_bytes)}")
            if state.ext is None:
                head += chunk
                state.ext = _check_head(url, head[:MAGIC_LEN], accept, final=False)
            fh.write(chunk)
            state.have += len(chunk)


def _read(resp: requests.Response, url: str, fh: BinaryIO, state: _State) -> bytes:
    """The next bytes of the body (decoded), b"" at its end; a network failure is retryable, a bad encoding final."""
    try:
        return resp.raw.read1(CHUNK, decode_content=True)
    except urllib3.exceptions.DecodeError as err:  # e.g. a corrupt gzip body: asking again gets the same bytes
        raise DownloadError(url, f"reading the response failed: {type(err).__name__}: {err}") from None
    except (urllib3.exceptions.HTTPError, OSError) as err:  # reset, body shorter than announced, read timeout
        fh.flush()
        raise _Retryable(f"connection dropped at {_size(state.have)}: {type(err).__name__}", 0.0) from None
