"""Source downloads: podcast feeds and YouTube channels/playlists into raw_audio/, one partition per source.

A run may cover many sources (backfills and the refresh schedule group them), so each source's materialization is
reported on its own as soon as it is done: a crash keeps the sources already finished, and metadata says per source
what was new, skipped and failed. One failing source never stops the others; the step fails at the end if any did.
"""

import time
from collections.abc import Callable, Iterator

import dagster as dg
from pydantic import Field

from emilia_assets.partitions import podcast_feeds, youtube_sources
from emilia_sources.download import HostThrottle
from emilia_sources.feeds import FeedSource
from emilia_sources.landing import IngestReport
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


class YoutubeIngestConfig(dg.Config):
    max_videos_per_run: int = Field(default=50, description="Newest videos considered per channel and run.")
    rate_limit_kbps: int = Field(default=0, description="yt-dlp download rate limit; 0 = none.")
    sleep_interval_s: float = Field(default=1.0, description="Politeness: seconds between downloads.")
    cookies_file: str = Field(default="", description="YOUTUBE_COOKIES_FILE: a cookies.txt path; never logged.")


def _report_metadata(report: IngestReport, wall_s: float) -> dict[str, dg.MetadataValue]:
    failed = [o for o in report.outcomes if o.status == "failed"]
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
            "\n".join(f"- {o.url}: {o.reason}" for o in failed[:100]) or "none"
        ),
    }


def _ingest_each(
    context: dg.AssetExecutionContext,
    store: ObjectStore,
    ingest: Callable[[RegisteredSource], IngestReport],
) -> Iterator[dg.AssetMaterialization]:
    broken: list[str] = []
    keys = context.partition_keys
    for i, source_id in enumerate(keys, start=1):
        t0 = time.perf_counter()
        try:
            report = ingest(lookup(store, source_id))
        except Exception as err:  # a source that cannot even be read is recorded; the others go on
            context.log.exception(f"source {source_id} failed")
            broken.append(f"{source_id}: {type(err).__name__}: {err}")
            continue
        if report.error and not report.error.startswith(DROPPED_BY_SCORE):
            broken.append(f"{source_id} ({report.source_url}): {report.error}")
        context.log.info(
            f"[{i}/{len(keys)}] {source_id}: {report.count('new')} new, {report.count('skipped')} skipped, "
            f"{report.count('failed')} failed" + (f"; {report.error}" if report.error else "")
        )
        yield dg.AssetMaterialization(
            asset_key=context.asset_key,
            partition=source_id,
            metadata=_report_metadata(report, time.perf_counter() - t0),
        )
    if broken and len(broken) == len(keys):
        raise dg.Failure(description="every source of this run failed", metadata={"errors": "\n".join(broken)})
    for line in broken:
        context.log.warning(line)


@dg.asset(
    partitions_def=podcast_feeds,
    group_name="ingest",
    kinds={"python"},
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SOURCES_PER_RUN),
    output_required=False,
    description="New episodes of a podcast feed, downloaded into raw_audio/<language>/<feed>/ with sidecars.",
)
def podcast_episodes(
    context: dg.AssetExecutionContext, config: PodcastIngestConfig, store: ObjectStoreResource
) -> Iterator[dg.AssetMaterialization]:
    s = store.open()
    throttle = HostThrottle(config.min_interval_per_host_s)  # one per run: feeds on the same CDN share it
    pc = PodcastConfig(
        max_episodes_per_run=config.max_episodes_per_run,
        max_episode_bytes=config.max_episode_mb * 2**20,
        min_interval_per_host_s=config.min_interval_per_host_s,
    )

    def ingest(src: RegisteredSource) -> IngestReport:
        source = FeedSource(url=src.url, id=src.source_id, language=src.language, categories=list(src.categories))
        return ingest_feed(s, source, raw_prefix=store.raw_prefix, config=pc, throttle=throttle, log=context.log.info)

    yield from _ingest_each(context, s, ingest)


@dg.asset(
    partitions_def=youtube_sources,
    group_name="ingest",
    kinds={"python"},
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SOURCES_PER_RUN),
    output_required=False,
    description="New videos of a YouTube channel or playlist, as m4a in raw_audio/<language>/<channel>/.",
)
def youtube_audio(
    context: dg.AssetExecutionContext, config: YoutubeIngestConfig, store: ObjectStoreResource
) -> Iterator[dg.AssetMaterialization]:
    s = store.open()
    yc = YoutubeConfig(
        max_videos_per_run=config.max_videos_per_run,
        rate_limit_bps=config.rate_limit_kbps * 1024 or None,
        sleep_interval_s=config.sleep_interval_s,
        cookies_file=config.cookies_file or None,
    )

    def ingest(src: RegisteredSource) -> IngestReport:
        return ingest_channel(s, src.url, source_id=src.source_id, language=src.language,
                              raw_prefix=store.raw_prefix, config=yc, log=context.log.info)

    yield from _ingest_each(context, s, ingest)
