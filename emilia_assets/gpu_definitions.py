"""The GPU code location (`emilia_gpu`): processed_segments, its job and the sensor that launches it.

A second code location from the same package and image as `emilia_assets.definitions` (`emilia_forge`), so that its
container context can put every run of it on an 8-GPU pod: a UI "Materialize" of processed_segments (the implicit
asset job, which carries no job tags), `dagster job launch -l emilia_gpu -j emilia_job`, a backfill and the sensor
alike. Its upstream (raw_episodes) and downstream (hf_shards) live in emilia_forge; the asset keys and the partition
set ("episode_batches") join them in the instance's asset graph.
"""

from __future__ import annotations

import dagster as dg

from emilia_assets.assets.process import processed_segments
from emilia_assets.definitions import gpu_pool_from_env, object_store_from_env, pipe_from_env
from emilia_assets.jobs import emilia_job
from sensors.gpu_batch import gpu_batch_sensor
from sensors.gpu_courtesy import build_gpu_courtesy_sensor


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[processed_segments],
        jobs=[emilia_job],
        sensors=[gpu_batch_sensor, build_gpu_courtesy_sensor(emilia_job)],
        resources={"store": object_store_from_env(), "pipe": pipe_from_env(), "gpu_pool": gpu_pool_from_env()},
        # One step per run: the implicit asset job (UI Materialize) runs it in the run's process too.
        executor=dg.in_process_executor,
    )
