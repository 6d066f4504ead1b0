"""Concurrency pools: a slot is one GPU pod (a whole 8-GPU node), so the pool's limit is the number of GPU nodes."""

GPU_POOL = "gpu_pods"
