"""YouTube channels and playlists (and anything else yt-dlp extracts) downloaded into raw_audio/ as m4a.

Why the shape below:

- **List flat, then download one entry at a time.** A channel is listed with `extract_flat` (one cheap request per
  page, no per-video extraction), then every entry gets its own `YoutubeDL` call: one private, age-gated or deleted
  video becomes a failed `Outcome` with a reason and the rest of the channel still lands.
- **Nothing downloads twice.** Before an entry costs a request it is checked against the shared dedupe markers
  (`already_landed`, keyed by webpage URL) and against a yt-dlp download archive kept in the object store at
  `sources/_ytdlp_archive/<source_id>.txt` (yt-dlp's own `<extractor> <id>` line format, so an operator can reuse it
  with `yt-dlp --download-archive`). The archive only ever lists entries that *landed*: yt-dlp records an entry as
  soon as its download finishes, so one that then fails the probe is taken out again before the archive is
  uploaded, which happens after every landing (a crash loses at most the entry in flight).
- **Keys never come from titles or ids.** Every download goes to its own temporary directory under a fixed file
  name and lands at `raw_key(...)`, a hash of the webpage URL; titles, GUIDs and ids only ever reach the sidecar.
- **Only public destinations, as far as we can see them.** yt-dlp makes its own connections (extractor pages, API
  calls, redirects, CDN media URLs), which the downloader's address guard cannot pin. What this module does check
  with the same `AddressPolicy` (public addresses plus INGEST_ALLOW_HOSTS): the registered URL before it is listed,
  and each entry's URL before it is downloaded. A public page that sends yt-dlp to a private address is not caught.
- **Secrets stay out of logs.** The cookies file is copied into the temporary directory (yt-dlp rewrites its cookie
  file on close, which a read-only secret mount would refuse) and neither path nor contents are ever logged.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yt_dlp
from yt_dlp.utils import make_archive_id, match_filter_func, unsmuggle_url

from emilia_pipe.audio import AudioError, AudioInfo, probe
from emilia_pipe.keys import join, slug
from emilia_sources.address_guard import AddressPolicy, AddressRefused
from emilia_sources.landing import IngestReport, Outcome, already_landed, land, raw_key, source_id_for
from emilia_store import ObjectStore

ARCHIVE_PREFIX = "sources/_ytdlp_archive/"
_PARTIAL_SUFFIXES = (".part", ".ytdl", ".temp", ".tmp")
_MAX_NESTING = 2  # channel -> tabs (videos, shorts, live) -> videos
# A live or upcoming stream would download until it ends (or fail): skipped, never archived, so a later run takes it.
_LIVE = ("is_live", "is_upcoming")
_NOT_LIVE = "!is_live & live_status !=? is_upcoming"


@dataclass(frozen=True)
class YoutubeConfig:
    format: str = "bestaudio[ext=m4a][abr<=128]/bestaudio[abr<=128]/bestaudio"  # m4a first: no re-encode
    audio_ext: str = "m4a"  # FFmpegExtractAudio target (a stream copy when the source is already AAC)
    max_videos_per_run: int = 50  # playlistend: the newest N entries of the listing are considered per run
    rate_limit_bps: int | None = None  # yt-dlp ratelimit
    sleep_interval_s: float = 0.0  # politeness between two downloads (not before the first, not for skips)
    cookies_file: str | None = None  # optional cookies.txt (YOUTUBE_COOKIES_FILE); never logged
    max_filesize: int = 2 * 2**30
    retries: int = 5
    socket_timeout_s: float = 30.0  # a stalled connection fails the entry instead of hanging the run


def archive_key(source_id: str) -> str:
    return join(ARCHIVE_PREFIX, f"{slug(source_id)}.txt")


class _Logger:
    """yt-dlp's logger interface, routed to `log`: warnings and errors always, screen lines without progress noise.

    Any occurrence of a secret (the cookies file paths) is redacted, whatever yt-dlp decides to print.
    """

    def __init__(self, log: Callable[[str], Any], secrets: list[str]):
        self._log = log
        self._secrets = [s for s in secrets if s]

    def redact(self, msg: str) -> str:
        for secret in self._secrets:
            msg = msg.replace(secret, "<cookies>")
        return msg

    def debug(self, msg: str) -> None:
        # to_screen() lands here too; "[debug]" lines only exist in verbose mode, progress lines are noise.
        if msg.startswith("[debug]") or (msg.startswith("[download]") and "%" in msg):
            return
        self._log(self.redact(f"yt-dlp: {msg}"))

    def info(self, msg: str) -> None:
        self.debug(msg)

    def warning(self, msg: str) -> None:
        self._log(self.redact(f"yt-dlp WARNING: {msg}"))

    def error(self, msg: str) -> None:
        self._log(self.redact(f"yt-dlp {msg}" if msg.startswith("ERROR") else f"yt-dlp ERROR: {msg}"))


def _base_opts(config: YoutubeConfig, logger: _Logger, cookies: Path | None) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "format": config.format,
        "logger": logger,
        "quiet": True,
        "noprogress": True,
        "color": "never",
        "cachedir": False,  # no ~/.cache/yt-dlp on pods
        "socket_timeout": config.socket_timeout_s,
        "retries": config.retries,
        "fragment_retries": config.retries,
        "extractor_retries": config.retries,
        "file_access_retries": config.retries,
        "max_filesize": config.max_filesize,
        "ignoreerrors": False,  # errors raise, so each entry fails on its own
        "noplaylist": False,
        "match_filter": match_filter_func(_NOT_LIVE),
    }
    if config.rate_limit_bps:
        opts["ratelimit"] = config.rate_limit_bps
    if cookies is not None:
        opts["cookiefile"] = str(cookies)
    return opts


def _plain(url: str | None) -> str | None:
    """A URL without yt-dlp's smuggled data (RSS entries carry their GUID in a `#__youtubedl_smuggle` fragment)."""
    return unsmuggle_url(url, {})[0] if url else None


def _flatten(info: dict[str, Any], ydl: yt_dlp.YoutubeDL, depth: int = 0) -> Iterator[dict[str, Any]]:
    """Leaf entries of a listing: nested playlists (a channel's tabs) are walked, flat playlist URLs listed too."""
    kind = info.get("_type", "video")
    if kind not in ("playlist", "multi_video"):
        yield info
        return
    for entry in info.get("entries") or []:
        if not entry:
            continue
        if entry.get("_type") in ("playlist", "multi_video"):
            if depth < _MAX_NESTING:
                yield from _flatten(entry, ydl, depth + 1)
        elif depth < _MAX_NESTING and _is_playlist_url(entry):
            sub = ydl.extract_info(entry["url"], download=False, ie_key=entry.get("ie_key"))
            if sub:
                yield from _flatten(sub, ydl, depth + 1)
        else:
            yield entry


def _is_playlist_url(entry: dict[str, Any]) -> bool:
    """A flat entry that names a playlist rather than a video (downloading it would fetch a whole playlist at once)."""
    ie_key = entry.get("ie_key") or ""
    return entry.get("_type") in ("url", "url_transparent") and ("Tab" in ie_key or "Playlist" in ie_key)


def _archive_probe(entry: dict[str, Any]) -> dict[str, Any]:
    """What yt-dlp needs to compute an entry's archive id before extracting it (the GUID of an RSS item is smuggled)."""
    url, smuggled = unsmuggle_url(entry.get("url") or "", {})
    return {
        "id": entry.get("id") or smuggled.get("force_videoid"),
        "ie_key": entry.get("ie_key"),
        "extractor_key": entry.get("extractor_key"),
        "url": url or entry.get("webpage_url"),
    }


def _published(info: dict[str, Any]) -> str | None:
    for field in ("timestamp", "release_timestamp"):
        ts = info.get(field)
        if isinstance(ts, int | float):
            return datetime.fromtimestamp(ts, UTC).isoformat()
    date = info.get("upload_date") or info.get("release_date")
    if isinstance(date, str) and len(date) == 8 and date.isdigit():
        return f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return None


def _sidecar(
    info: dict[str, Any],
    webpage_url: str,
    source_url: str,
    source_id: str,
    language: str | None,
    audio: AudioInfo,
    size: int,
) -> dict[str, Any]:
    """Field names follow the podcast sidecar where they mean the same (`duration` is the probed one)."""
    return {
        "title": info.get("title"),
        "id": info.get("id"),
        "webpage_url": webpage_url,
        "channel": info.get("channel"),
        "uploader": info.get("uploader"),
        "published": _published(info),
        "duration": round(audio.duration_s, 3),
        "declared_duration": info.get("duration"),
        "language": language,
        "categories": info.get("categories"),
        "tags": info.get("tags"),
        "license": info.get("license"),
        "source_url": source_url,  # the channel/playlist URL as registered
        "playlist_url": info.get("playlist_webpage_url"),
        "channel_url": info.get("channel_url") or info.get("uploader_url"),
        "extractor": info.get("extractor_key"),
        "bytes": size,
        "codec": audio.codec,
        "source_id": source_id,
        "source": "youtube",
    }


def _downloaded_file(work: Path) -> Path | None:
    files = [p for p in work.iterdir() if p.is_file() and not p.name.endswith(_PARTIAL_SUFFIXES)]
    return max(files, key=lambda p: p.stat().st_size) if files else None


def _reason(err: BaseException, logger: _Logger) -> str:
    msg = str(err).removeprefix("ERROR: ").strip() or type(err).__name__
    return logger.redact(msg)


def ingest_channel(
    store: ObjectStore,
    url: str,
    *,
    source_id: str | None = None,
    language: str | None = None,
    raw_prefix: str = "raw_audio/",
    config: YoutubeConfig = YoutubeConfig(),  # noqa: B008 - frozen, so a shared default is safe
    policy: AddressPolicy | None = None,
    log: Callable[[str], Any] = print,
) -> IngestReport:
    """Land the newest `max_videos_per_run` entries of a channel, playlist or single video URL not yet landed.

    Never raises for a failing entry (it becomes a failed `Outcome`); a listing that fails sets `report.error`.
    `policy` (default: public addresses plus INGEST_ALLOW_HOSTS) is checked on the source and on each entry URL.
    """
    sid = source_id or source_id_for(url, "yt")
    report = IngestReport(source_id=sid, source_url=url)
    policy = policy or AddressPolicy.from_env()
    try:
        policy.check_url(url)
    except AddressRefused as err:
        report.error = str(err)
        return report
    except OSError as err:  # the name does not resolve: yt-dlp would fail the listing the same way
        report.error = f"listing failed: {url} does not resolve ({err})"
        return report

    # A URL that itself landed (a single video or direct media link) costs no request at all on a rerun.
    landed = already_landed(store, url=url)
    if landed:
        report.outcomes.append(Outcome(url=url, status="skipped", key=landed, reason="already landed"))
        return report

    with tempfile.TemporaryDirectory(prefix="emilia-yt-") as tmp_dir:
        tmp = Path(tmp_dir)
        cookies: Path | None = None
        if config.cookies_file:
            cookies = tmp / "cookies.txt"
            try:
                shutil.copyfile(config.cookies_file, cookies)
            except OSError as err:
                report.error = f"cookies file unreadable ({type(err).__name__})"  # no path: it may be a secret
                return report
        logger = _Logger(log, [config.cookies_file or "", str(cookies) if cookies else ""])

        # The archive: fetched before, rewritten after every landing.
        archive_path = tmp / "archive.txt"
        akey = archive_key(sid)
        try:
            store.get_file(akey, archive_path)
        except KeyError:
            archive_path.write_text("", encoding="utf-8")
        lines = [ln.strip() for ln in archive_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        archive: set[str] = set(lines)  # handed to yt-dlp as its in-memory archive

        base = _base_opts(config, logger, cookies)
        list_opts = {**base, "extract_flat": "in_playlist", "playlistend": config.max_videos_per_run}
        try:
            with yt_dlp.YoutubeDL(list_opts) as ydl:
                info = ydl.extract_info(url, download=False)
                entries = list(_flatten(info, ydl)) if info else []
        except Exception as err:  # the source itself failed: recorded, never raised
            report.error = f"listing failed: {_reason(err, logger)}"
            return report
        entries = entries[: config.max_videos_per_run]
        log(f"{sid}: {len(entries)} entries listed")

        downloads = 0
        for n, entry in enumerate(entries):
            entry_url = _plain(entry.get("webpage_url") or entry.get("url")) or str(entry.get("id"))
            landed = already_landed(store, url=entry_url)
            if landed:
                report.outcomes.append(Outcome(url=entry_url, status="skipped", key=landed, reason="already landed"))
                continue
            if entry.get("live_status") in _LIVE or entry.get("is_live"):
                report.outcomes.append(Outcome(url=entry_url, status="skipped", reason="live or upcoming stream"))
                continue
            refused = _refusal(policy, entry_url)
            if refused:
                report.outcomes.append(Outcome(url=entry_url, status="failed", reason=refused))
                continue

            work = tmp / f"dl-{n:05d}"
            work.mkdir()
            opts = {
                **base,
                "download_archive": archive,
                "paths": {"home": str(work), "temp": str(work)},
                "outtmpl": {"default": "media.%(ext)s"},  # never a title or an id in a file name
                "postprocessors": [{"key": "FFmpegExtractAudio", "preferredcodec": config.audio_ext}],
                "overwrites": True,
                "continuedl": False,
            }
            with yt_dlp.YoutubeDL(opts) as ydl:
                if ydl.in_download_archive(_archive_probe(entry)):
                    report.outcomes.append(Outcome(url=entry_url, status="skipped", reason="in download archive"))
                    continue
                if downloads and config.sleep_interval_s > 0:
                    time.sleep(config.sleep_interval_s)
                downloads += 1
                try:
                    result = ydl.process_ie_result(dict(entry), download=True)
                except Exception as err:  # one failing video never stops the channel
                    report.outcomes.append(Outcome(url=entry_url, status="failed", reason=_reason(err, logger)))
                    shutil.rmtree(work, ignore_errors=True)
                    continue
                result = result or {}
                archive_id = (
                    make_archive_id(result["extractor_key"], result["id"])
                    if result.get("extractor_key") and result.get("id")
                    else None
                )
            outcome = _land_one(
                store, work, result, entry_url, url, sid, language, raw_prefix, config, archive_id, archive
            )
            report.outcomes.append(outcome)
            if outcome.status == "new" and archive_id:
                if archive_id not in lines:
                    lines.append(archive_id)
                archive_path.write_text("".join(f"{ln}\n" for ln in lines), encoding="utf-8")
                try:
                    store.put_file(archive_path, akey)
                except Exception as err:  # the markers still dedupe; the next landing uploads the whole archive
                    log(f"{sid}: archive upload failed ({type(err).__name__}: {err})")
            shutil.rmtree(work, ignore_errors=True)
    return report


def _refusal(policy: AddressPolicy, entry_url: str) -> str | None:
    """Why the policy refuses an entry URL, None when it may be downloaded (or is no http(s) URL: an id that
    yt-dlp's extractor turns into its own site's URL)."""
    if not entry_url.lower().startswith(("http://", "https://")):
        return None
    try:
        policy.check_url(entry_url)
    except AddressRefused as err:
        return str(err)
    except OSError:
        return None  # unresolvable: yt-dlp reports that itself, as a failed download
    return None


def _land_one(
    store: ObjectStore,
    work: Path,
    info: dict[str, Any],
    entry_url: str,
    source_url: str,
    source_id: str,
    language: str | None,
    raw_prefix: str,
    config: YoutubeConfig,
    archive_id: str | None,
    archive: set[str],
) -> Outcome:
    """Probe the download and land it; anything short of a landing takes the entry back out of the archive."""
    webpage_url = _plain(info.get("webpage_url")) or entry_url
    path = _downloaded_file(work)
    if path is None and (info.get("live_status") in _LIVE or info.get("is_live")):
        archive.discard(archive_id or "")
        return Outcome(url=webpage_url, status="skipped", reason="live or upcoming stream")
    if path is None:
        if archive_id and archive_id in archive and not info.get("requested_downloads"):
            return Outcome(url=webpage_url, status="skipped", reason="in download archive")
        archive.discard(archive_id or "")
        return Outcome(
            url=webpage_url,
            status="failed",
            reason=f"no file downloaded (larger than {config.max_filesize} bytes, or no audio format)",
        )
    try:
        audio = probe(path)
    except AudioError as err:
        archive.discard(archive_id or "")
        return Outcome(url=webpage_url, status="failed", reason=err.reason)
    landed = already_landed(store, url=webpage_url)  # the entry URL may differ from the final one (redirects)
    if landed:
        return Outcome(url=webpage_url, status="skipped", key=landed, reason="already landed")
    lang = language or info.get("language")
    ext = path.suffix.lstrip(".") or config.audio_ext
    key = raw_key(raw_prefix, lang, source_id, webpage_url or str(info.get("id")), ext)
    size = path.stat().st_size
    try:
        land(
            store,
            path,
            key,
            _sidecar(info, webpage_url, source_url, source_id, lang, audio, size),
            url=webpage_url,
        )
    except Exception as err:  # a store error fails this entry; the next may succeed
        archive.discard(archive_id or "")
        return Outcome(url=webpage_url, status="failed", reason=f"landing failed: {type(err).__name__}: {err}")
    return Outcome(url=webpage_url, status="new", key=key, bytes=size, duration_s=audio.duration_s)
