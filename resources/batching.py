"""How the raw-audio sensor pages through the store and how big a batch may grow."""


import dagster as dg
from pydantic import Field

from emilia_pipe.batching import BatchLimits, ScanLimits


class BatchingResource(dg.ConfigurableResource):
    max_episodes: int = Field(default=200, description="Episodes per batch (BATCH_MAX_EPISODES).")
    max_gib: float = Field(default=20.0, description="Bytes of raw audio per batch, in GiB (BATCH_MAX_GIB).")
    page_size: int = Field(default=1000, description="Keys per list call.")
    max_pages_per_tick: int = Field(default=5, description="List calls per sensor tick.")

    def batch_limits(self) -> BatchLimits:
        return BatchLimits(max_episodes=self.max_episodes, max_bytes=int(self.max_gib * 2**30))

    def scan_limits(self) -> ScanLimits:
        return ScanLimits(page_size=self.page_size, max_pages_per_tick=self.max_pages_per_tick)
