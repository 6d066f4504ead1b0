"""Ingest one podcast feed: fetch, parse, judge, then land each new episode in raw_audio/ with its sidecar.

Everything a feed controls is treated as untrusted: keys are derived from hashes (`landing.raw_key`), never from a
GUID or a title; sizes are capped by the downloader; "audio" is checked by magic bytes and then by decoding its first
second (`emilia_pipe.audio.probe`), so an HTML error page or a truncated file never reaches the GPU pipe.

One bad enclosure never stops a feed: it becomes a `failed` outcome with its reason and the next episode is tried,
and the failure is remembered (`failures`): the next refreshes leave it alone (`deferred`) until its retry is due.
Every request goes through the address guard (`address_guard`: public addresses only, unless allowed).
Only a problem with the feed itself (unreachable, malformed, dropped by the dialogue score) ends it early, recorded in
`IngestReport.error`. Store errors are not caught: they are not the feed's fault, and the landing order (audio, sidecar,
markers) makes a re-run after one safe.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from emilia_pipe.audio import AudioError, probe
from emilia_sources.address_guard import AddressPolicy, guarded_session
from emilia_sources.download import DownloadError, HostThrottle, download
from emilia_sources.failures import RetryPolicy, clear_failure, load_failure, record_failure
from emilia_sources.feeds import (
    DialogueWeights,
    Entry,
    Feed,
    FeedError,
    FeedSource,
    dialogue_score,
    load_feed_list,
    normalize_language,
    parse_feed,
)
from emilia_sources.landing import (
    IngestReport,
    Outcome,
    already_landed,
    file_sha256,
    land,
    mark_seen,
    raw_key,
    source_id_for,
)
from emilia_store import ObjectStore

# FeedSource and load_feed_list live in feeds.py; re-exported so the Dagster layer needs one import for podcasts
__all__ = ["DialogueWeights", "FeedSource", "PodcastConfig", "ingest_feed", "load_feed_list"]


@dataclass
class PodcastConfig:
    max_episode_bytes: int = 2 * 2**30
    max_feed_bytes: int = 20 * 2**20
    # Downloads tried (new + failed) per feed and run, newest first; episodes already landed do not count, so each
    # run also works through a feed's back catalogue until it is done.
    max_episodes_per_run: int = 50
    weights: DialogueWeights = field(default_factory=DialogueWeights)
    min_interval_per_host_s: float = 1.0
    retries: int = 4
    backoff_s: float = 0.5
    timeout_s: float = 30.0
    tmp_dir: str | None = None  # where episodes wait between download and upload; None: the system's temp dir
    allow_hosts: tuple[str, ...] = ()  # hosts/ranges reachable besides public addresses, added to INGEST_ALLOW_HOSTS
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # when a failed enclosure is tried again


def _newest_first(entries: list[Entry]) -> list[Entry]:
    # ISO 8601 strings in UTC sort like the dates; undated entries go last, in feed order
    return sorted(entries, key=lambda e: e.published or "", reverse=True)


def _sidecar(feed: Feed, source: FeedSource, source_id: str, language: str | None, entry: Entry,
             enclosure_url: str, duration_s: float, size: int, codec: str, sha256: str) -> dict[str, Any]:
    return {
        "title": entry.title,
        "guid": entry.guid,
        "published": entry.published,
        "duration": round(duration_s, 3),
        "declared_duration": entry.duration_s,
        "feed_url": source.url,
        "feed_title": feed.title,
        "author": feed.author,
        "license": feed.rights,
        "language": language,
        "categories": feed.categories or list(source.categories),
        "explicit": entry.explicit if entry.explicit is not None else feed.explicit,
        "link": entry.link,
        "enclosure_url": enclosure_url,
        "bytes": size,
        "codec": codec,
        "sha256": sha256,
        "source_id": source_id,
        "source": "podcast",
    }


def ingest_feed(
    store: ObjectStore,
    source: FeedSource,
    *,
    raw_prefix: str = "raw_audio/",
    config: PodcastConfig | None = None,
    session: requests.Session | None = None,
    throttle: HostThrottle | None = None,
    policy: AddressPolicy | None = None,
    clock: Callable[[], float] = time.time,
    log: Callable[[str], Any] = print,
) -> IngestReport:
    """Land the feed's new episodes under `raw_audio/<language>/<source id>/`; returns what happened to each.

    `throttle` should be shared by every feed of a run (many feeds live on the same few CDNs); without one, this
    call gets its own. The language is the feed list's when it gives one, else the feed's own `<language>`.
    Destinations: `session` (made by `guarded_session`), else `policy`, else INGEST_ALLOW_HOSTS plus
    `config.allow_hosts`. `clock` (epoch seconds) decides when a failed enclosure is due again.
    """
    config = config or PodcastConfig()
    source_id = source.id or source_id_for(source.url, "feed")
    report = IngestReport(source_id=source_id, source_url=source.url)
    throttle = throttle or HostThrottle(config.min_interval_per_host_s)
    own_session = session is None
    if session is None:
        session = guarded_session(policy or AddressPolicy.from_env(config.allow_hosts))
    fetch = {"session": session, "throttle": throttle, "retries": config.retries, "backoff_s": config.backoff_s,
             "timeout_s": config.timeout_s}
    try:
        with tempfile.TemporaryDirectory(prefix="emilia-ingest-", dir=config.tmp_dir) as tmp_name:
            tmp = Path(tmp_name)
            try:
                got = download(source.url, tmp / "feed.xml", max_bytes=config.max_feed_bytes, accept="feed", **fetch)
                feed = parse_feed(got.path.read_bytes(), source.url)
            except DownloadError as err:
                report.error = f"feed unreachable: {err.reason}"
                log(f"{source_id}: {report.error}")
                return report
            except FeedError as err:
                report.error = f"not a usable feed: {err.reason}"
                log(f"{source_id}: {report.error}")
                return report

            score = dialogue_score(feed, config.weights)
            if score < config.weights.threshold:
                report.error = f"dropped by dialogue score {score:g} < {config.weights.threshold:g}"
                log(f"{source_id} ({feed.title!r}): {report.error}")
                return report
            language = normalize_language(source.language) or feed.language
            log(f"{source_id} ({feed.title!r}, {language or 'und'}): {len(feed.entries)} entries, score {score:g}")

            tried: set[str] = set()
            attempts = 0
            for entry in _newest_first(feed.entries):
                url = entry.enclosure_url
                if not url:
                    continue  # a text-only post: nothing to listen to
                if attempts >= config.max_episodes_per_run:
                    log(f"{source_id}: {config.max_episodes_per_run} downloads this run; the rest waits for the next")
                    break
                if url in tried:
                    report.outcomes.append(Outcome(url, "skipped", reason="same enclosure twice in this feed"))
                    continue
                existing = already_landed(store, url=url, guid=entry.guid, source_id=source_id)
                if existing:
                    report.outcomes.append(Outcome(url, "skipped", key=existing, reason="already landed"))
                    continue
                failed_before = load_failure(store, url)
                if failed_before and not failed_before.due(clock()):
                    report.outcomes.append(Outcome(url, "deferred", reason=failed_before.reason,
                                                   failures=failed_before.failures,
                                                   retry_at=failed_before.next_retry_at))
                    continue
                tried.add(url)
                attempts += 1
                outcome = _land_episode(store, feed, source, source_id, language, entry, url, raw_prefix, tmp,
                                        config, fetch)
                report.outcomes.append(outcome)
                if outcome.status == "failed":
                    record = record_failure(store, url, source_id, outcome.reason or "unknown", clock(),
                                            config.retry, failed_before)
                    outcome.failures, outcome.retry_at = record.failures, record.next_retry_at
                    log(f"{source_id}: failed {url}: {outcome.reason} (failure {record.failures}, "
                        f"next try after {record.next_retry_at})")
                elif failed_before:
                    clear_failure(store, url)
    finally:
        if own_session:
            session.close()
    log(f"{source_id}: {report.count('new')} new ({report.new_bytes / 2**20:.1f} MiB, {report.new_hours:.2f} h), "
        f"{report.count('skipped')} skipped, {report.count('failed')} failed, {report.count('deferred')} deferred")
    return report


def _land_episode(
    store: ObjectStore,
    feed: Feed,
    source: FeedSource,
    source_id: str,
    language: str | None,
    entry: Entry,
    url: str,
    raw_prefix: str,
    tmp: Path,
    config: PodcastConfig,
    fetch: dict[str, Any],
) -> Outcome:
    """Download, probe and land one enclosure; every problem of the episode itself becomes a failed outcome.

    The same audio behind another URL (a mirror, a re-hosted back catalogue) is recognized by its SHA-256 and only
    marked as seen, so its URL is not fetched again either.
    """
    dest = tmp / "episode"
    try:
        got = download(url, dest, max_bytes=config.max_episode_bytes, accept="audio", **fetch)
    except DownloadError as err:
        return Outcome(url, "failed", reason=err.reason)
    try:
        try:
            info = probe(got.path)
        except AudioError as err:
            return Outcome(url, "failed", reason=f"unreadable audio: {err.reason}", bytes=got.bytes)
        digest = file_sha256(got.path)
        duplicate = already_landed(store, content_sha256=digest)
        if duplicate:
            mark_seen(store, duplicate, url, guid=entry.guid, source_id=source_id)
            return Outcome(url, "skipped", key=duplicate, reason="same audio already landed")
        key = raw_key(raw_prefix, language, source_id, url, got.ext)
        sidecar = _sidecar(feed, source, source_id, language, entry, url, info.duration_s, got.bytes, info.codec,
                           digest)
        land(store, got.path, key, sidecar, url=url, guid=entry.guid, source_id=source_id, content_sha256=digest)
        return Outcome(url, "new", key=key, bytes=got.bytes, duration_s=info.duration_s)
    finally:
        got.path.unlink(missing_ok=True)  # episodes can be gigabytes: one on disk at a time
