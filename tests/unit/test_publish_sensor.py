"""publish_sensor launches one publish run per new processed_segments materialization, however it was made."""

import dagster as dg

from emilia_assets.assets.process import processed_segments
from emilia_assets.definitions import defs
from emilia_assets.partitions import episode_batches
from sensors.publish import publish_sensor


def test_each_finished_batch_is_published_once(tmp_path):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(episode_batches.name, ["b1", "b2", "b3"])

        def finish(batch: str) -> None:  # what a run, a UI materialization or a backfill records
            instance.report_runless_asset_event(dg.AssetMaterialization(processed_segments.key, partition=batch))

        def tick(cursor):
            return publish_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs()))

        first = tick(None)
        assert first.run_requests == []
        finish("b1")
        finish("b2")
        second = tick(first.cursor)
        assert [r.partition_key for r in second.run_requests] == ["b1", "b2"]
        assert len({r.run_key for r in second.run_requests}) == 2
        third = tick(second.cursor)
        assert third.run_requests == []
        finish("b1")  # re-processed: published again
        finish("b3")
        fourth = tick(third.cursor)
        assert [r.partition_key for r in fourth.run_requests] == ["b1", "b3"]
        assert not {r.run_key for r in fourth.run_requests} & {r.run_key for r in second.run_requests}


def test_the_sensor_keeps_the_release_writer_pool_at_one_slot():
    from emilia_assets.pools import RELEASE_POOL

    with dg.instance_for_test() as instance:
        def limits():
            return {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}

        assert RELEASE_POOL not in limits()
        publish_sensor(dg.build_sensor_context(instance=instance, cursor=None, definitions=defs()))
        assert limits()[RELEASE_POOL] == 1
        instance.event_log_storage.set_concurrency_slots(RELEASE_POOL, 3)  # raised by hand
        publish_sensor(dg.build_sensor_context(instance=instance, cursor=None, definitions=defs()))
        assert limits()[RELEASE_POOL] == 1
    from emilia_assets.assets.publish import hf_shards

    assert hf_shards.op.pool == RELEASE_POOL
