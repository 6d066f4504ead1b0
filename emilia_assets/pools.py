"""Concurrency pools. `gpu_pods`: a slot is one GPU pod (a whole 8-GPU node), so the pool's limit is the number of
GPU nodes. `release_writer`: one slot, one publish at a time (the publish sensor sets the limit to 1)."""

GPU_POOL = "gpu_pods"
RELEASE_POOL = "release_writer"
