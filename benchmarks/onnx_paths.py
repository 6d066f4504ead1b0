"""The ONNX stages' execution paths side by side: ONNX Runtime (the float32 reference) and the torch executor in
float32 and float16, on the models of a model folder; agreement and speed per path.

    python benchmarks/onnx_paths.py --models DIR --device cuda [--seconds 12] [--out FILE]

Separation: the vocals of a speech-over-music clip, SNR in dB of each path's instrumental (mix minus vocals, what
the model contributes) against ONNX Runtime's on the CPU. DNSMOS: the largest absolute MOS difference over clips of
3, 10 and 13 s. The tolerances are those of tests/unit/test_onnx_torch.py (separation >= 80 dB float32, >= 40 dB
float16 on the vocals; DNSMOS <= 0.001 / <= 0.02 MOS); here they are reported, at production size and on the GPU.
ONNX Runtime's CUDA provider is timed too where this onnxruntime has it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(np.sum((other.astype(np.float64) - reference) ** 2))
    return float("inf") if noise == 0 else round(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / noise), 1)


def _timed(fn):
    import torch

    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, round(time.perf_counter() - t0, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=12.0, help="separation clip length")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/out/onnx_paths.json"))
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from emilia_pipe import audio as audio_io
    from emilia_pipe.dnsmos import DNSMOS_SR, Dnsmos, DnsmosConfig
    from emilia_pipe.models import ModelSet
    from emilia_pipe.separation import MdxSeparator, SeparationConfig

    models = ModelSet.load(args.models)
    mix = audio_io.decode(ROOT / "samples/music_bed.mp3", 24_000)
    mix = np.resize(mix, int(args.seconds * 24_000)).astype(np.float32)
    paths = [("onnxruntime", "float32", "cpu"), ("torch", "float32", args.device), ("torch", "float16", args.device)]
    if args.device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        paths.insert(1, ("onnxruntime", "float32", args.device))
    report: dict = {"models": models.kind, "device": args.device, "separation": {}, "dnsmos": {}}
    reference = None
    for backend, precision, device in paths:
        sep = MdxSeparator(SeparationConfig(models.separation, backend=backend, precision=precision, device=device))
        sep.vocals(mix[: 24_000 * 6], 24_000)  # warm-up: kernels, allocator
        vocals, seconds = _timed(lambda sep=sep: sep.vocals(mix, 24_000))
        entry = {"runtime": sep.runtime, "seconds": seconds, "audio_s_per_s": round(args.seconds / seconds, 1)}
        if reference is None:
            reference = vocals
        else:
            entry["vocals_snr_db"] = snr_db(reference, vocals)
            entry["instrumental_snr_db"] = snr_db(mix - reference, mix - vocals)
        report["separation"][f"{backend} {precision} {device}"] = entry
        print("separation", backend, precision, device, entry, flush=True)

    speech = audio_io.decode(ROOT / "samples/monologue.mp3", DNSMOS_SR)
    clips = [speech[DNSMOS_SR : 4 * DNSMOS_SR], speech[2 * DNSMOS_SR : 12 * DNSMOS_SR], speech[: 13 * DNSMOS_SR]]
    scores_ref = None
    for backend, precision, device in paths:
        dns = Dnsmos(DnsmosConfig(models.dnsmos_sig_bak_ovr, models.dnsmos_p808, backend=backend, precision=precision,
                                  device=device))
        dns.score_many(clips[:1], DNSMOS_SR)
        scores, seconds = _timed(lambda dns=dns: dns.score_many(clips, DNSMOS_SR))
        entry = {"runtime": dns.runtime, "seconds": seconds}
        if scores_ref is None:
            scores_ref = scores
        else:
            entry["max_abs_mos_difference"] = round(max(abs(a[k] - b[k]) for a, b in zip(scores, scores_ref,
                                                                                         strict=True) for k in a), 5)
        report["dnsmos"][f"{backend} {precision} {device}"] = entry
        print("dnsmos", backend, precision, device, entry, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
