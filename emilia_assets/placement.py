"""Where runs land on Kubernetes: the run pod shape of each code location, in `dagster-k8s/config` form.

The GPU location (`emilia_gpu`, processed_segments only) gets whole 8×H100 nodes; the CPU location (`emilia_forge`:
ingest, probing, publishing) gets small pods that cannot land on a GPU node, because GPU nodes carry the
`nvidia.com/gpu` taint and these pods carry no toleration for it.

These dicts are the one source of truth; the same values appear, as they must, in three files that cannot import
Python: `deploy/values.yaml` (each user deployment's `DAGSTER_CONTAINER_CONTEXT`), `dagster_cloud.yaml` (Dagster+
`container_context`) and, for the GPU job, the job's own `dagster-k8s/config` tag. `tests/unit/test_deploy_config.py`
fails when they drift apart.
"""

from __future__ import annotations

import json

K8S_CONFIG_TAG = "dagster-k8s/config"  # dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY, without importing dagster_k8s

# Sized for the common 8×H100 nodes (DGX H100, p5.48xlarge, a3-highgpu-8g, ND H100 v5: 96-224 vCPU, 1.8-2 TiB):
# the requests leave room for the node's daemons. Memory has a limit, CPU does not (no throttling of decode and
# upload threads). /dev/shm is memory-backed and large, since PyTorch worker processes share tensors through it
# (Docker's default of 64 MiB breaks them); what is written there counts against the memory limit.
GPU_RUN_K8S_CONFIG: dict = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "8"},
            "limits": {"memory": "1024Gi", "nvidia.com/gpu": "8"},
        },
        "volume_mounts": [{"name": "dshm", "mount_path": "/dev/shm"}],
    },
    "pod_spec_config": {
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "volumes": [{"name": "dshm", "empty_dir": {"medium": "Memory", "size_limit": "64Gi"}}],
    },
}

# Probing a batch, packing shards and uploading to the Hub: a few cores and a bounded amount of memory.
CPU_RUN_K8S_CONFIG: dict = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "2", "memory": "8Gi"},
            "limits": {"memory": "16Gi"},
        },
    },
}

# The code location container contexts, as `dagster api grpc` reads them from DAGSTER_CONTAINER_CONTEXT.
GPU_CONTAINER_CONTEXT: dict = {"k8s": {"run_k8s_config": GPU_RUN_K8S_CONFIG}}
CPU_CONTAINER_CONTEXT: dict = {"k8s": {"run_k8s_config": CPU_RUN_K8S_CONFIG}}


def k8s_config_tags(config: dict) -> dict[str, str]:
    """Job/run tags that put a run on a pod of this shape (K8sRunLauncher reads `dagster-k8s/config` from tags)."""
    return {K8S_CONFIG_TAG: json.dumps(config, sort_keys=True)}
