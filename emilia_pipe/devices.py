"""Which workers a batch run starts: one per GPU × `WORKERS_PER_GPU`, or N CPU workers when there is no GPU.

A worker is pinned to its GPU through `CUDA_VISIBLE_DEVICES`, set in the worker before torch, ONNX Runtime or
CTranslate2 load, so inside the worker the GPU is always `cuda:0` and no library can wander onto a neighbour's
device. A production setting that cannot be honoured is an error, never a silent switch to the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass


class DeviceError(RuntimeError):
    """The requested device cannot be used (e.g. `cuda` on a machine where no GPU is visible)."""


@dataclass(frozen=True)
class WorkerSlot:
    """One worker process of a batch run.

    Attributes:
        index: position in the pool (0..n-1); a replacement worker takes the slot of the one it replaces.
        device: what the worker's stages use: "cuda" (its one pinned GPU) or "cpu".
        visible_devices: `CUDA_VISIBLE_DEVICES` for the worker ("" hides every GPU from a CPU worker).
        gpu: the GPU's id as the pod sees it ("0", "3" or a UUID), None for a CPU worker.
    """

    index: int
    device: str
    visible_devices: str
    gpu: str | None = None

    @property
    def label(self) -> str:
        return f"gpu{self.gpu}/w{self.index}" if self.gpu is not None else f"cpu/w{self.index}"


@dataclass(frozen=True)
class PoolPlan:
    """The workers of one batch run, with the settings they came from (recorded in the run's metadata)."""

    slots: tuple[WorkerSlot, ...]
    device: str  # "cuda" or "cpu"
    gpus: tuple[str, ...]
    threads_per_worker: int

    def describe(self) -> str:
        if self.device == "cpu":
            return f"{len(self.slots)} CPU workers, {self.threads_per_worker} threads each"
        per = len(self.slots) // max(1, len(self.gpus))
        return f"{len(self.slots)} workers on {len(self.gpus)} GPUs ({per} per GPU: {', '.join(self.gpus)})"


def visible_gpus(environ: dict[str, str] | None = None, count: int | None = None) -> list[str]:
    """The GPUs this process may use, by the ids `CUDA_VISIBLE_DEVICES` accepts.

    When the variable is set (Kubernetes' device plugin sets it in the pod), its entries are the ids; otherwise the
    devices are counted (`count`, or torch's NVML-based count, which does not create a CUDA context).
    """
    env = os.environ if environ is None else environ
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is not None:
        ids = [x.strip() for x in raw.split(",") if x.strip()]
        # CUDA stops at the first invalid entry ("-1" is the usual way to hide every GPU).
        out: list[str] = []
        for x in ids:
            if x.startswith("-"):
                break
            out.append(x)
        return out
    if count is None:
        count = _cuda_device_count()
    return [str(i) for i in range(count)]


def _cuda_device_count() -> int:
    try:
        import torch
    except ImportError:  # an install without torch has no GPU path at all
        return 0
    return int(torch.cuda.device_count())


def plan_workers(
    device: str = "auto",
    workers_per_gpu: int = 1,
    max_gpus: int | None = None,
    cpu_workers: int = 1,
    gpus: Sequence[str] | None = None,
    cpu_count: int | None = None,
) -> PoolPlan:
    """Decide the workers of a batch run.

    Args:
        device: `auto` (every visible GPU, else the CPU), `cuda` (every visible GPU; none is an error), `cuda:N`
            (only the N-th visible GPU), or `cpu`.
        workers_per_gpu: worker processes per GPU (`WORKERS_PER_GPU`); more than one overlaps one worker's CPU work
            with another's GPU work.
        max_gpus: use at most this many GPUs (`MAX_GPUS`); None or 0 means all.
        cpu_workers: worker processes when running on the CPU (`EMILIA_CPU_WORKERS`).
        gpus: the visible GPU ids (default: `visible_gpus()`).
        cpu_count: cores to share among the workers' threads (default: this process's CPU affinity).

    Raises:
        DeviceError: a CUDA device was asked for and none is visible, or `cuda:N` names a GPU that is not there.
        ValueError: a count is out of range or the device string is malformed.
    """
    if workers_per_gpu < 1 or cpu_workers < 1:
        raise ValueError(f"workers_per_gpu and cpu_workers must be >= 1, got {workers_per_gpu}, {cpu_workers}")
    if max_gpus is not None and max_gpus < 0:
        raise ValueError(f"max_gpus must be >= 0, got {max_gpus}")
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    cores = cpu_count or len(os.sched_getaffinity(0))
    available = list(gpus) if gpus is not None else ([] if device == "cpu" else visible_gpus())
    if device == "cpu" or (device == "auto" and not available):
        slots = tuple(WorkerSlot(i, "cpu", "") for i in range(cpu_workers))
        return PoolPlan(slots, "cpu", (), max(1, cores // cpu_workers))
    if not available:
        raise DeviceError(
            f"device {device!r} was requested but no CUDA device is visible to this process "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
            "use EMILIA_DEVICE=cpu to run on the CPU on purpose"
        )
    if device.startswith("cuda:"):
        n = int(device[5:])
        if n >= len(available):
            raise DeviceError(f"device {device!r} was requested but only {len(available)} GPUs are visible")
        chosen = [available[n]]
    else:
        chosen = available[: max_gpus or None]
    slots = tuple(
        WorkerSlot(i * workers_per_gpu + w, "cuda", gpu, gpu) for i, gpu in enumerate(chosen)
        for w in range(workers_per_gpu)
    )
    return PoolPlan(slots, "cuda", tuple(chosen), max(1, cores // len(slots)))


CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


def provider_device(provider: str) -> str:
    """The device an ONNX Runtime provider runs on, in the pipe's words ("cuda" / "cpu"; any other provider by its
    own name), for the stages' read-back of where they really ran."""
    return {CUDA_EP: "cuda", CPU_EP: "cpu"}.get(provider, provider)


def cuda_index(device: str) -> int | None:
    """`cpu` -> None, `cuda` -> 0, `cuda:N` -> N (case-insensitive); anything else is a configuration error."""
    d = device.strip().lower()
    if d == "cpu":
        return None
    if d == "cuda":
        return 0
    if d.startswith("cuda:") and d[5:].isdigit():
        return int(d[5:])
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def onnx_providers(device: str, stage: str, cuda_options: dict[str, str | int] | None = None) -> list:
    """ONNX Runtime providers for a stage's device; a CUDA device that this onnxruntime cannot serve is an error.

    Raises:
        DeviceError: CUDA was asked for and this onnxruntime build has no CUDA provider (the CPU wheel).
    """
    index = cuda_index(device)
    if index is None:
        return [CPU_EP]
    import onnxruntime as ort

    if CUDA_EP not in ort.get_available_providers():
        raise DeviceError(
            f"{stage}: device {device!r} was requested but this onnxruntime {ort.__version__} has no {CUDA_EP} "
            "(install onnxruntime-gpu, the project's `gpu` extra), or set the stage's device to cpu on purpose"
        )
    return [(CUDA_EP, {**(cuda_options or {}), "device_id": index}), CPU_EP]


def require_onnx_device(session, device: str, stage: str) -> str:
    """The provider a session really runs on; an error when CUDA was asked for and ONNX Runtime fell back to the CPU
    (it does so silently when the CUDA or cuDNN libraries cannot be loaded)."""
    provider = session.get_providers()[0]
    if cuda_index(device) is not None and provider != CUDA_EP:
        raise DeviceError(
            f"{stage}: ONNX Runtime could not start {CUDA_EP} for device {device!r} and would run on {provider} "
            "(CUDA or cuDNN libraries missing? onnxruntime's log says which)"
        )
    return provider


BACKENDS = ("auto", "onnxruntime", "torch")
PRECISIONS = ("auto", "float32", "float16")


def onnx_backend(backend: str, device: str, stage: str) -> str:
    """Which runtime executes a stage's ONNX file: `onnxruntime` or `torch` (`emilia_pipe.onnx_torch`).

    `auto` is ONNX Runtime on the CPU (the reference the torch executor is tested against) and torch on a GPU, where
    the models then sit next to the torch front ends with no host round trip per batch and can run in float16;
    ONNX Runtime's CUDA provider stays available as `onnxruntime` (the image ships onnxruntime-gpu).
    """
    b = backend.strip().lower()
    if b not in BACKENDS:
        raise ValueError(f"{stage}: backend must be one of {list(BACKENDS)}, got {backend!r}")
    if b != "auto":
        return b
    return "onnxruntime" if cuda_index(device) is None else "torch"


def onnx_precision(precision: str, backend: str, device: str, stage: str) -> str:
    """`float32` or `float16`; `auto` is float16 for the torch executor on a GPU, float32 everywhere else.

    float16 needs the torch executor (ONNX Runtime would need a converted file).
    """
    p = precision.strip().lower()
    if p not in PRECISIONS:
        raise ValueError(f"{stage}: precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if p == "auto":
        return "float16" if backend == "torch" and cuda_index(device) is not None else "float32"
    if p == "float16" and backend != "torch":
        raise ValueError(f"{stage}: precision float16 needs the torch backend (ONNX Runtime runs the float32 file)")
    return p


def torch_device(device: str, stage: str):
    """The torch device for a stage; CUDA that torch cannot see is an error, never a quiet CPU run."""
    import torch

    index = cuda_index(device)
    if index is None:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"{stage}: device {device!r} was requested but torch sees no CUDA device "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); set the stage's device to cpu on purpose"
        )
    if index >= torch.cuda.device_count():
        raise DeviceError(f"{stage}: device {device!r} was requested but torch sees {torch.cuda.device_count()} GPU(s)")
    return torch.device(f"cuda:{index}")
