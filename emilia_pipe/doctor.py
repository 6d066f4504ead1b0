"""`emilia-forge doctor`: can this machine (or image) run the pipe the way it is configured?

It imports every stage, lists what the GPU libraries see (torch's CUDA devices, ONNX Runtime's providers,
CTranslate2's CUDA device count), names the model set in use, plans the workers, and with `--load` builds the whole
pipeline and reads back where each model stage really runs. Anything that would make a configured CUDA stage run on
the CPU is a failure, not a warning: the image's health check and a pod's first minute are the cheap places to find
a missing cuBLAS or a CPU-only onnxruntime, not an hour into a batch.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any

STAGE_MODULES = (
    "emilia_pipe.audio",
    "emilia_pipe.separation",
    "emilia_pipe.diarization",
    "emilia_pipe.vad",
    "emilia_pipe.segmentation",
    "emilia_pipe.asr",
    "emilia_pipe.dnsmos",
    "emilia_pipe.export",
    "emilia_pipe.pipeline",
)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def render(self) -> str:
        lines = [f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]
        lines.append("doctor: all checks passed" if self.ok else
                     f"doctor: {sum(not c.ok for c in self.checks)} check(s) failed")
        return "\n".join(lines)


def _wanted_cuda(device: str, stage_device: str | None) -> bool:
    d = (stage_device or device).lower()
    return d.startswith("cuda")


def run_doctor(models_dir: str, device: str, stages: list[str], load: bool, hf_token: str | None = None,
               environ: dict[str, str] | None = None) -> DoctorReport:
    """Every check, in the order a human would read them; never raises for a failed check."""
    env = os.environ if environ is None else environ
    report = DoctorReport()
    for name in STAGE_MODULES:
        try:
            importlib.import_module(name)
            report.add(f"import {name}", True, "imported")
        except Exception as err:  # noqa: BLE001 - reported
            report.add(f"import {name}", False, f"{type(err).__name__}: {err}")
    if not report.ok:
        return report

    import ctranslate2
    import onnxruntime as ort
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = [torch.cuda.get_device_name(i) for i in range(count)]
    ct2_gpus = ctranslate2.get_cuda_device_count()
    providers = ort.get_available_providers()
    report.facts.update({"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_devices": gpus,
                         "onnxruntime": ort.__version__, "onnxruntime_providers": providers,
                         "ctranslate2": ctranslate2.__version__, "ctranslate2_cuda_devices": ct2_gpus})
    report.add("torch", True, f"{torch.__version__} (CUDA build {torch.version.cuda}), "
                              f"{len(gpus)} CUDA device(s){': ' + ', '.join(gpus) if gpus else ''}")
    report.add("onnxruntime", True, f"{ort.__version__}, providers {', '.join(providers)}")
    report.add("ctranslate2", True, f"{ctranslate2.__version__}, {ct2_gpus} CUDA device(s)")

    from emilia_pipe.devices import CUDA_EP, DeviceError, onnx_backend, plan_workers
    from emilia_pipe.models import ModelSet

    try:
        models = ModelSet.load(models_dir) if models_dir else ModelSet()
        report.facts["models"] = {"dir": models_dir or None, **models.__dict__}
        where = models_dir or "Hugging Face ids (no EMILIA_MODELS_DIR)"
        note = " (random weights: output is not a dataset)" if models.kind in ("tiny", "full-size") else ""
        report.add("model set", True, f"{models.kind} from {where}{note}")
    except Exception as err:  # noqa: BLE001 - reported
        report.add("model set", False, f"{type(err).__name__}: {err}")
        return report

    try:
        plan = plan_workers(device, int(env.get("WORKERS_PER_GPU") or 1), int(env.get("MAX_GPUS") or 0) or None,
                            int(env.get("EMILIA_CPU_WORKERS") or 1))
        report.add("workers", True, plan.describe())
    except (DeviceError, ValueError) as err:
        report.add("workers", False, str(err))
        return report

    if plan.device == "cuda":
        # What each configured stage needs on a GPU pod, before any model is loaded. The ONNX stages run on the
        # backend their setting picks (auto: torch on a GPU), each with its own way of failing to reach CUDA.
        for stage, device_var, backend_var in (("separate", "SEPARATION_DEVICE", "SEPARATION_BACKEND"),
                                               ("dnsmos", "DNSMOS_DEVICE", "DNSMOS_BACKEND")):
            device_wanted = env.get(device_var) or "cuda"
            if stage not in stages or not _wanted_cuda("cuda", device_wanted):
                continue
            try:
                backend = onnx_backend(env.get(backend_var) or "auto", device_wanted, stage)
            except ValueError as err:
                report.add(f"{stage} on cuda", False, str(err))
                continue
            if backend == "torch" and not torch.cuda.is_available():
                report.add(f"{stage} on cuda", False, "torch backend, but torch sees no CUDA device")
            elif backend == "onnxruntime" and CUDA_EP not in providers:
                report.add(f"{stage} on cuda", False, f"onnxruntime {ort.__version__} has no {CUDA_EP}: install "
                                                      "onnxruntime-gpu (the `gpu` extra)")
            else:
                report.add(f"{stage} on cuda", True, f"{backend} backend")
        if "asr" in stages and ct2_gpus == 0:
            report.add("asr on cuda", False, "CTranslate2 sees no CUDA device (it loads libcublas.so.12: CUDA 12 "
                                             "cuBLAS must be on the library path)")
        if "diarize" in stages and not torch.cuda.is_available():
            report.add("diarize on cuda", False, "torch sees no CUDA device")

    if load and report.ok:
        _load_pipeline(report, models, plan.device, stages, hf_token)
    return report


def _load_pipeline(report: DoctorReport, models: Any, device: str, stages: list[str], hf_token: str | None) -> None:
    """Build the pipeline as a worker does (on the first GPU) and read back where each stage runs."""
    from emilia_pipe.pipeline import EmiliaPipeline
    from emilia_pipe.settings import build_pipe_config

    try:
        config = build_pipe_config(models, stages=stages, device=device, hf_token=hf_token,
                                   asr_language=os.environ.get("ASR_LANGUAGE") or None)
        pipeline = EmiliaPipeline(config)
    except Exception as err:  # noqa: BLE001 - the stage's own message says which and why
        report.add("load the pipeline", False, f"{type(err).__name__}: {err}")
        return
    devices = pipeline.runtime_devices()
    report.facts["stage_devices"] = devices
    report.facts["stage_backends"] = pipeline.runtime_backends()
    wanted = {"separate": getattr(config.separation, "device", None), "dnsmos": getattr(config.dnsmos, "device", None),
              "asr": getattr(config.asr, "device", None), "diarize": getattr(config.diarization, "device", None)}
    for stage, actual in devices.items():
        want = wanted.get(stage)
        if want and want.startswith("cuda") and not actual.startswith("cuda"):
            report.add(f"{stage} runs on", False, f"{actual}, although {want} was configured")
        else:
            report.add(f"{stage} runs on", True, f"{actual} ({report.facts['stage_backends'].get(stage, '?')})")
