"""The GPU pool as a Dagster resource: how many workers a batch run starts and how it feeds them."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from emilia_pipe.devices import PoolPlan, plan_workers
from emilia_pipe.runner import GiB, RunnerSettings


class GpuPoolResource(dg.ConfigurableResource):
    """One worker per GPU × `workers_per_gpu` (or `cpu_workers` on a machine without GPUs), each pinned to its device
    and loading the models once; downloads run ahead of the workers and uploads behind them."""

    workers_per_gpu: int = Field(default=1, description="WORKERS_PER_GPU: worker processes per GPU.")
    max_gpus: int = Field(default=0, description="MAX_GPUS: use at most this many of the pod's GPUs; 0 = all.")
    cpu_workers: int = Field(default=1, description="EMILIA_CPU_WORKERS: worker processes when running on the CPU.")
    prefetch_gib: float = Field(default=16.0, description="PREFETCH_GIB: audio downloaded ahead of the workers.")
    download_threads: int = Field(default=4, description="Concurrent downloads from the store.")
    upload_threads: int = Field(default=2, description="Concurrent episode uploads to the store.")
    max_attempts: int = Field(default=2, description="Tries per episode when its worker dies or runs out of memory.")
    overlap: bool = Field(default=True, description="Inside each worker, decode the next episode and export the "
                                                    "previous one while the current one is in the models.")

    def plan(self, device: str) -> PoolPlan:
        """Raises `DeviceError` when `device` asks for CUDA and the pod has no GPU (never a silent CPU run)."""
        return plan_workers(device, self.workers_per_gpu, self.max_gpus or None, self.cpu_workers)

    def runner_settings(self) -> RunnerSettings:
        return RunnerSettings(prefetch_bytes=int(self.prefetch_gib * GiB), download_threads=self.download_threads,
                              upload_threads=self.upload_threads, max_attempts=self.max_attempts,
                              overlap=self.overlap)
