"""Sources through Dagster: the lists register partitions, materializing a source lands its new episodes, and the
raw-audio sensor then batches them for the Emilia chain."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from emilia_assets.assets.sources import podcast_episodes, youtube_audio
from emilia_assets.definitions import defs
from emilia_assets.partitions import podcast_feeds, youtube_sources
from emilia_store import iter_objects
from resources.object_store import ObjectStoreResource
from sensors.sources import sources_sensor
from tests.integration.helpers import assert_paired, batch_from_sensor, materialize_batch, metadata, read_tar
from tests.integration.test_podcast_ingest import AUDIO, day, rss

pytest_plugins = ["tests.http_fixture"]  # the `http_server` fixture

NO_WAIT = {"ops": {"podcast_episodes": {"config": {"min_interval_per_host_s": 0.0}}}}
YT_NO_WAIT = {"ops": {"youtube_audio": {"config": {"sleep_interval_s": 0.0}}}}


def test_listed_sources_are_ingested_then_batched_and_processed(tmp_path, http_server):
    root = tmp_path / "store"
    store = ObjectStoreResource(local_root=str(root))
    s = store.open()
    for stem in ("monologue", "two_voices"):
        http_server.route(f"/media/{stem}.mp3", AUDIO[stem], "audio/mpeg")
    http_server.route("/feed.xml", rss([
        {"title": f"Episode {i}", "guid": f"g{i}", "url": http_server.url(f"/media/{stem}.mp3"), "date": day(i + 1)}
        for i, stem in enumerate(("monologue", "two_voices"))
    ]), "application/rss+xml")
    http_server.route("/clip.mp3", AUDIO["music_bed"], "audio/mpeg")
    s.put_bytes("sources/podcast_feeds.txt", f"# our feeds\n{http_server.url('/feed.xml')}\n".encode())
    s.put_bytes("sources/youtube_sources.txt", f"{http_server.url('/clip.mp3')}\n".encode())

    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, definitions=defs(), resources={"store": store})
        result = sources_sensor(ctx)
        for req in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        (feed_id,) = instance.get_dynamic_partitions(podcast_feeds.name)
        (yt_id,) = instance.get_dynamic_partitions(youtube_sources.name)
        assert {r.job_name for r in result.run_requests} == {"podcast_ingest_job", "youtube_ingest_job"}
        again = sources_sensor(dg.build_sensor_context(instance=instance, definitions=defs(),
                                                       resources={"store": store}, cursor=result.cursor))
        assert again.run_requests == [] and again.dynamic_partitions_requests == []

        run = dg.materialize([podcast_episodes], partition_key=feed_id, instance=instance,
                             resources={"store": store}, run_config=NO_WAIT)
        meta = metadata(run, "podcast_episodes")
        assert (meta["new_episodes"], meta["failed"]) == (2, 0)
        assert meta["hours"] > 0 and meta["bytes"] == len(AUDIO["monologue"]) + len(AUDIO["two_voices"])
        media_hits = http_server.hits("/media/monologue.mp3", "/media/two_voices.mp3")
        rerun = dg.materialize([podcast_episodes], partition_key=feed_id, instance=instance,
                               resources={"store": store}, run_config=NO_WAIT)
        assert metadata(rerun, "podcast_episodes")["new_episodes"] == 0
        assert http_server.hits("/media/monologue.mp3", "/media/two_voices.mp3") == media_hits, "downloaded again"

        yt = dg.materialize([youtube_audio], partition_key=yt_id, instance=instance,
                            resources={"store": store}, run_config=YT_NO_WAIT)
        assert metadata(yt, "youtube_audio")["new_episodes"] == 1

        raw = [o.key for o in iter_objects(s, "raw_audio/") if not o.key.endswith(".json")]
        assert len(raw) == 3 and all(k.startswith(("raw_audio/en/feed-", "raw_audio/und/yt-")) for k in raw)

        # The raw-audio sensor picks up what ingest landed, and the chain runs on it.
        (batch,) = batch_from_sensor(instance, store)
        chain = materialize_batch(instance, store, batch)
        assert metadata(chain, "processed_segments")["done"] == 3
    docs = [json.loads(p.read_text()) for p in root.glob("processed/*/*/all_segments.json")]
    titles = {d["episode"]["source_metadata"]["title"] for d in docs}
    assert {"Episode 0", "Episode 1"} <= titles, "the ingest sidecar travels with the episode"
    samples = [x for p in root.glob("shards/*/*.tar") for x in assert_paired(read_tar(p))]
    assert len(samples) == sum(len(d["segments"]) for d in docs) > 0


@pytest.mark.parametrize("bad", ["<rss><channel><item>", "<html>not a feed</html>"])
def test_a_broken_feed_is_a_recorded_failure(tmp_path, http_server, bad):
    store = ObjectStoreResource(local_root=str(tmp_path / "store"))
    http_server.route("/bad.xml", bad.encode(), "application/rss+xml")
    store.open().put_bytes("sources/podcast_feeds.txt", http_server.url("/bad.xml").encode())
    with dg.instance_for_test() as instance:
        result = sources_sensor(dg.build_sensor_context(instance=instance, definitions=defs(),
                                                        resources={"store": store}))
        for req in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        (feed_id,) = instance.get_dynamic_partitions(podcast_feeds.name)
        run = dg.materialize([podcast_episodes], partition_key=feed_id, instance=instance,
                             resources={"store": store}, run_config=NO_WAIT, raise_on_error=False)
        assert not run.success  # the only source of the run failed: the run says so
        assert run.asset_materializations_for_node("podcast_episodes") == []
        (obs,) = run.asset_observations_for_node("podcast_episodes")
        assert obs.partition == feed_id and obs.metadata["source_error"].value  # the reason, on the partition
    assert not list((tmp_path / "store").glob("raw_audio/**/*.*"))


def _status(instance: dg.DagsterInstance, keys: list[str]) -> dict[str, str | None]:
    by_key = instance.get_status_by_partition(podcast_episodes.key, keys, podcast_feeds) or {}
    return {k: (v.value if v else None) for k, v in by_key.items()}


def test_a_broken_source_fails_its_partition_and_the_others_are_materialized(tmp_path, http_server):
    """A ranged run over two feeds (as the sensor and the refresh schedule launch them), one of them broken."""
    store = ObjectStoreResource(local_root=str(tmp_path / "store"))
    http_server.route("/media/ok.mp3", AUDIO["monologue"], "audio/mpeg")
    good = http_server.route("/good.xml", rss([
        {"title": "ok", "guid": "ok", "url": http_server.url("/media/ok.mp3"), "date": day(2)},
        {"title": "gone", "guid": "gone", "url": http_server.url("/media/gone.mp3"), "date": day(1)},  # 404
    ]), "application/rss+xml")
    bad = http_server.route("/bad.xml", b"<html><body>We moved!</body></html>", "text/html")
    store.open().put_bytes("sources/podcast_feeds.txt", f"{good}\n{bad}\n".encode())

    with dg.instance_for_test() as instance:
        result = sources_sensor(dg.build_sensor_context(instance=instance, definitions=defs(),
                                                        resources={"store": store}))
        for req in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        good_id, bad_id = instance.get_dynamic_partitions(podcast_feeds.name)
        (request,) = result.run_requests  # one run over both sources

        run = dg.materialize([podcast_episodes], instance=instance, resources={"store": store}, run_config=NO_WAIT,
                             tags=request.tags, raise_on_error=False)

        assert not run.success
        (failure,) = run.get_step_failure_events()
        description = failure.step_failure_data.user_failure_data.description
        assert description.startswith("1 of 2 sources failed") and bad_id in description and bad in description
        assert "not a feed: server sent Content-Type 'text/html'" in description
        assert _status(instance, [good_id, bad_id]) == {good_id: "MATERIALIZED", bad_id: "FAILED"}
        (mat,) = run.asset_materializations_for_node("podcast_episodes")
        meta = {k: v.value for k, v in mat.metadata.items()}
        assert mat.partition == good_id and (meta["new_episodes"], meta["failed"], meta["deferred"]) == (1, 1, 0)
        assert "gone.mp3: HTTP 404 Not Found (failure 1, next try after " in meta["failures"]
        (obs,) = run.asset_observations_for_node("podcast_episodes")
        assert obs.partition == bad_id and "not a feed" in obs.metadata["source_error"].value

        # The next refresh of the good feed: the 404 waits for its retry time, and the metadata lists it.
        again = dg.materialize([podcast_episodes], partition_key=good_id, instance=instance,
                               resources={"store": store}, run_config=NO_WAIT)
        meta = metadata(again, "podcast_episodes")
        assert (meta["new_episodes"], meta["skipped"], meta["failed"], meta["deferred"]) == (0, 1, 0, 1)
        assert "gone.mp3: HTTP 404 Not Found (failure 1, next try after " in meta["deferred_failures"]
        assert http_server.hits("/media/gone.mp3") == 1
