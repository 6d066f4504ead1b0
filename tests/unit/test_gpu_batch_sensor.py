"""gpu_batch_sensor (emilia_gpu) launches one GPU run per new raw_episodes materialization (emilia_forge's probe),
whichever way the probe was made, and never a second one for the same probe."""

import dagster as dg

from emilia_assets import gpu_definitions
from emilia_assets.assets.ingest import raw_episodes
from emilia_assets.partitions import episode_batches
from sensors.gpu_batch import gpu_batch_sensor


def test_each_probed_batch_gets_one_gpu_run_per_probe():
    defs = gpu_definitions.defs()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(episode_batches.name, ["b1", "b2", "b3"])

        def probed(batch: str) -> None:  # what the probe run (another code location) records in the shared instance
            instance.report_runless_asset_event(dg.AssetMaterialization(raw_episodes.key, partition=batch))

        def tick(cursor):
            return gpu_batch_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs))

        first = tick(None)
        assert first.run_requests == []
        probed("b1")
        probed("b2")
        # not a probe: ignored
        instance.report_runless_asset_event(dg.AssetMaterialization("processed_segments", partition="b3"))
        second = tick(first.cursor)
        assert [r.partition_key for r in second.run_requests] == ["b1", "b2"]
        assert len({r.run_key for r in second.run_requests}) == 2
        assert tick(second.cursor).run_requests == []
        probed("b1")  # probed again (new files, a UI re-materialization): processed again, resuming per episode
        third = tick(second.cursor)
        assert [r.partition_key for r in third.run_requests] == ["b1"]
        assert not {r.run_key for r in third.run_requests} & {r.run_key for r in second.run_requests}
