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
