"""Source automation: `sources_sensor` registers new feeds/channels from the lists in the store and ingests them;
the refresh schedules re-ingest every registered source (new episodes) in runs of SOURCES_PER_RUN sources."""

import hashlib
import json
import os
import tempfile
from pathlib import Path

import dagster as dg

from emilia_assets.assets.sources import SOURCES_PER_RUN
from emilia_assets.jobs import podcast_ingest_job, youtube_ingest_job
from emilia_assets.partitions import podcast_feeds, youtube_sources
from emilia_pipe.settings import env_number
from emilia_sources.feeds import load_feed_list
from emilia_sources.landing import source_id_for
from emilia_sources.registry import LIST_KEYS, RegisteredSource, register
from emilia_store import ObjectStore
from resources.object_store import ObjectStoreResource

# Dagster's documented run tags for a ranged run (the same ones the UI and `dagster job launch --tags` use);
# RunRequest takes no partition range argument in this release.
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"

KINDS = {
    "podcast": (podcast_feeds, podcast_ingest_job, "feed"),
    "youtube": (youtube_sources, youtube_ingest_job, "yt"),
}


def _list_objects(store: ObjectStore, kind: str) -> list[str]:
    base = LIST_KEYS[kind]
    return [base + ext for ext in (".txt", ".csv", ".parquet") if store.exists(base + ext)]


def ranged_run_requests(job_name: str, keys: list[str], prefix: str) -> list[dg.RunRequest]:
    """One run per chunk of consecutive partitions (dynamic partitions range in insertion order)."""
    out = []
    for i in range(0, len(keys), SOURCES_PER_RUN):
        chunk = keys[i : i + SOURCES_PER_RUN]
        out.append(dg.RunRequest(
            job_name=job_name,
            run_key=f"{prefix}-{chunk[0]}..{chunk[-1]}",
            tags={ASSET_PARTITION_RANGE_START_TAG: chunk[0], ASSET_PARTITION_RANGE_END_TAG: chunk[-1]},
        ))
    return out


@dg.sensor(
    jobs=[podcast_ingest_job, youtube_ingest_job],
    minimum_interval_seconds=env_number("SOURCES_SENSOR_INTERVAL_S", 300),
    description="Registers the feeds and channels listed in sources/podcast_feeds.* and sources/youtube_sources.*.",
)
def sources_sensor(context: dg.SensorEvaluationContext, store: ObjectStoreResource) -> dg.SensorResult:
    s = store.open()
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    partition_requests, run_requests = [], []
    for kind, (parts, job, prefix) in KINDS.items():
        for key in _list_objects(s, kind):
            data = s.get_bytes(key)
            digest = hashlib.sha256(data).hexdigest()
            if seen.get(key) == digest:
                continue  # list unchanged since the last tick
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / Path(key).name
                path.write_bytes(data)
                listed = load_feed_list(path)
            existing = set(context.instance.get_dynamic_partitions(parts.name))
            new: list[str] = []
            for src in listed:
                sid = src.id or source_id_for(src.url, prefix)
                if sid in existing or sid in new:
                    continue
                register(s, RegisteredSource(sid, kind, src.url, src.language, list(src.categories or [])))
                new.append(sid)
            if new:
                partition_requests.append(parts.build_add_request(new))
                run_requests += ranged_run_requests(job.name, new, f"{kind}-new")
            context.log.info(f"{key}: {len(listed)} sources listed, {len(new)} new")
            seen[key] = digest
    return dg.SensorResult(dynamic_partitions_requests=partition_requests, run_requests=run_requests,
                           cursor=json.dumps(seen))


def _refresh_schedule(kind: str) -> dg.ScheduleDefinition:
    parts, job, prefix = KINDS[kind]

    @dg.schedule(
        name=f"refresh_{kind}_schedule",
        cron_schedule=os.environ.get("SOURCES_REFRESH_CRON", "0 3 * * *"),
        job=job,
        description=f"Re-ingests every registered {kind} source daily: new episodes land, known ones are skipped.",
    )
    def refresh(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        stamp = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
        keys = list(context.instance.get_dynamic_partitions(parts.name))
        return ranged_run_requests(job.name, keys, f"refresh-{stamp}-{prefix}")

    return refresh


refresh_podcasts_schedule = _refresh_schedule("podcast")
refresh_youtube_schedule = _refresh_schedule("youtube")
