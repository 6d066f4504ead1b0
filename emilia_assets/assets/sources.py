"""Source downloads: podcast feeds and YouTube channels/playlists into raw_audio/, one partition per source.

A run may cover many sources (backfills and the refresh schedule group them), so each source's materialization is
reported on its own as soon as it is done: a crash keeps the sources already finished, and metadata says per source
what was new, skipped, failed and deferred (failed before, waiting for its retry).

A source *fails* when the source itself does (feed unreachable or refused, not a feed, listing failed, not
registered); a bad episode does not fail its source. A failing source never stops the others: they are all tried and
materialized, and the step then raises `dg.Failure` naming every failed source with its reason. The failed sources
are not materialized (an `AssetObservation` carries their metadata), so their partitions show as failed in the UI and
in the instance's partition status, while the others stay materialized. A feed dropped by the dialogue score is a
decision, not a failure: it is materialized, with the reason in `source_error`.
"""

import time
from collections.abc import Callable, Iterator

import dagster as dg
from pydantic import Field

from emilia_assets.partitions import podcast_feeds, youtube_sources
from emilia_assets.versions import SOURCES_CODE_VERSION
from emilia_sources.address_guard import AddressPolicy, guarded_session
from emilia_sources.download import HostThrottle
from emilia_sources.feeds import FeedSource
from emilia_sources.landing import IngestReport, Outcome
from emilia_sources.podcasts import PodcastConfig, ingest_feed
from emilia_sources.registry import RegisteredSource, lookup
from emilia_sources.youtube import YoutubeConfig, ingest_channel
from emilia_store import ObjectStore
from resources.object_store import ObjectStoreResource

SOURCES_PER_RUN = 50
DROPPED_BY_SCORE = "dropped by dialogue score"  # a decision about the feed, not a failure


class PodcastIngestConfig(dg.Config):
    max_episodes_per_run: int = Field(
        default=50, description="Downloads attempted per feed and run, newest first (the back catalogue follows)."
    )
    max_episode_mb: int = Field(default=2048, description="Enclosures larger than this are refused.")
    min_interval_per_host_s: float = Field(default=1.0, description="Politeness: seconds between requests to a host.")
    allow_hosts: list[str] = Field(
        default=[],
        description="Host names, IPs or CIDR ranges that feeds and enclosures may reach besides public addresses "
        "(added to INGEST_ALLOW_HOSTS).",
    )


class YoutubeIngestConfig(dg.Config):
    max_videos_per_run: int = Field(default=50, description="Newest videos considered per channel and run.")
    rate_limit_kbps: int = Field(default=0, description="yt-dlp download rate limit; 0 = none.")
    sleep_interval_s: float = Field(default=1.0, description="Politeness: seconds between downloads.")
    cookies_file: str = Field(default="", description="YOUTUBE_COOKIES_FILE: a cookies.txt path; never logged.")
    allow_hosts: list[str] = Field(
        default=[],
        description="Host names, IPs or CIDR ranges that source and video URLs may name besides public addresses "
        "(added to INGEST_ALLOW_HOSTS).",
    )


def _retry_note(o: Outcome) -> str:
    return f" (failure {o.failures}, next try after {o.retry_at})" if o.retry_at else ""


def _report_metadata(report: IngestReport, wall_s: float) -> dict[str, dg.MetadataValue]:
    failed = [o for o in report.outcomes if o.status == "failed"]
    deferred = [o for o in report.outcomes if o.status == "deferred"]
    return {
        "source_url": dg.MetadataValue.url(report.source_url),
        "new_episodes": dg.MetadataValue.int(report.count("new")),
        "skipped": dg.MetadataValue.int(report.count("skipped")),
        "failed": dg.MetadataValue.int(len(failed)),
        "bytes": dg.MetadataValue.int(report.new_bytes),
        "hours": dg.MetadataValue.float(round(report.new_hours, 4)),
        "wall_s": dg.MetadataValue.float(round(wall_s, 2)),
        "source_error": dg.MetadataValue.text(report.error or ""),
        "failures": dg.MetadataValue.md(
            "\n".join(f"- {o.url}: {o.reason}{_retry_note(o)}" for o in failed[:100]) or "none"
        ),
        "deferred": dg.MetadataValue.int(len(deferred)),
        "deferred_failures": dg.MetadataValue.md(
            "\n".join(f"- {o.url}: {o.reason}{_retry_note(o)}" for o in deferred[:100]) or "none"
        ),
    }


def _ingest_each(
    context: dg.AssetExecutionContext,
    store: ObjectStore,
    ingest: Callable[[RegisteredSource], IngestReport],
) -> Iterator[dg.AssetMaterialization]:
    failed: list[str] = []
    keys = context.partition_keys
    for i, source_id in enumerate(keys, start=1):
        t0 = time.perf_counter()
        try:
            report = ingest(lookup(store, source_id))
        except Exception as err:  # a source that cannot even be read is recorded; the others go on
            context.log.exception(f"source {source_id} failed")
            failed.append(f"{source_id}: {type(err).__name__}: {err}")
            continue
        context.log.info(
            f"[{i}/{len(keys)}] {source_id}: {report.count('new')} new, {report.count('skipped')} skipped, "
            f"{report.count('failed')} failed, {report.count('deferred')} deferred"
            + (f"; {report.error}" if report.error else "")
        )
        metadata = _report_metadata(report, time.perf_counter() - t0)
        if report.error and not report.error.startswith(DROPPED_BY_SCORE):
            failed.append(f"{source_id} ({report.source_url}): {report.error}")
            context.log.error(f"source {failed[-1]}")
            # not a materialization: the partition is to show as failed; the observation keeps the why
            yield dg.AssetObservation(asset_key=context.asset_key, partition=source_id, metadata=metadata)
            continue
        yield dg.AssetMaterialization(asset_key=context.asset_key, partition=source_id, metadata=metadata)
    if failed:
        shown = "; ".join(failed[:5]) + (f"; and {len(failed) - 5} more" if len(failed) > 5 else "")
        raise dg.Failure(
            description=f"{len(failed)} of {len(keys)} sources failed: {shown}",
            metadata={
                "failed_sources": dg.MetadataValue.md("\n".join(f"- {line}" for line in failed)),
                "failed": dg.MetadataValue.int(len(failed)),
                "materialized": dg.MetadataValue.int(len(keys) - len(failed)),
            },
        )


@dg.asset(
    partitions_def=podcast_feeds,
    group_name="ingest",
    code_version=SOURCES_CODE_VERSION,
    kinds={"python"},
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SOURCES_PER_RUN),
    output_required=False,
    description="New episodes of a podcast feed, downloaded into `raw_audio/<language>/<feed>/` with sidecars.",
)
def podcast_episodes(
    context: dg.AssetExecutionContext, config: PodcastIngestConfig, store: ObjectStoreResource
) -> Iterator[dg.AssetMaterialization]:
    s = store.open()
    throttle = HostThrottle(config.min_interval_per_host_s)  # one per run: feeds on the same CDN share it
    policy = AddressPolicy.from_env(config.allow_hosts)  # a bad entry fails the run here, before any source
    pc = PodcastConfig(
        max_episodes_per_run=config.max_episodes_per_run,
        max_episode_bytes=config.max_episode_mb * 2**20,
        min_interval_per_host_s=config.min_interval_per_host_s,
    )

    with guarded_session(policy) as session:  # one connection pool for the run

        def ingest(src: RegisteredSource) -> IngestReport:
            source = FeedSource(url=src.url, id=src.source_id, language=src.language, categories=list(src.categories))
            return ingest_feed(s, source, raw_prefix=store.raw_prefix, config=pc, session=session, throttle=throttle,
                               log=context.log.info)

        yield from _ingest_each(context, s, ingest)


@dg.asset(
    partitions_def=youtube_sources,
    group_name="ingest",
    code_version=SOURCES_CODE_VERSION,
    kinds={"python"},
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SOURCES_PER_RUN),
    output_required=False,
    description="New videos of a YouTube channel or playlist, as m4a in `raw_audio/<language>/<channel>/`.",
)
def youtube_audio(
    context: dg.AssetExecutionContext, config: YoutubeIngestConfig, store: ObjectStoreResource
) -> Iterator[dg.AssetMaterialization]:
    s = store.open()
    policy = AddressPolicy.from_env(config.allow_hosts)
    yc = YoutubeConfig(
        max_videos_per_run=config.max_videos_per_run,
        rate_limit_bps=config.rate_limit_kbps * 1024 or None,
        sleep_interval_s=config.sleep_interval_s,
        cookies_file=config.cookies_file or None,
    )

    def ingest(src: RegisteredSource) -> IngestReport:
        return ingest_channel(s, src.url, source_id=src.source_id, language=src.language,
                              raw_prefix=store.raw_prefix, config=yc, policy=policy, log=context.log.info)

    yield from _ingest_each(context, s, ingest)
