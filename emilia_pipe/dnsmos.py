"""DNSMOS quality scores (P.835 SIG/BAK/OVRL, optionally P.808) for segments, as the Emilia release records them.

We reproduce Microsoft's `dnsmos_local.py` (DNS Challenge, DNSMOS/) so our numbers can be compared with published
Emilia scores and with anyone else's DNSMOS run:

- audio at 16 kHz; a clip shorter than 9.01 s is doubled (appended to itself) until it is long enough, exactly as the
  reference does, so a 3 s clip becomes 12 s and is scored over three shifted windows rather than one;
- windows of 144 160 samples (9.01 s) every 16 000 samples (1 s), counted as the reference counts them
  (`int(floor(seconds) - 9.01) + 1`), each scored on its own; raw SIG/BAK/OVRL go through the non-personalised
  P.835 polynomial fits, then the clip's score is the mean over windows;
- P.808 gets a log-mel of the same window less its last 160 samples (librosa's defaults: periodic Hann, centred frames
  with zero padding, Slaney mel scale and area norm, n_fft 321, hop 160, 120 mels, power_to_db relative to the
  window's maximum with an 80 dB floor, then (dB + 40) / 40), which gives the 900 x 120 input the model expects.

One deliberate difference: the reference computes window bounds in floating point, and `int((i + 9.01) * 16000)`
comes out one sample short for i = 7..23, so it silently skips those windows of long clips. We use exact integer
bounds and score every counted window. Clips under 17 s after tiling score identically (checked against librosa and
the reference loop to 1e-4); a longer one (4.5 s, say, doubled twice to 18 s) may differ in the second decimal.

`score_many` stacks the windows of many clips into batched ONNX calls, which is what makes a GPU worth it; the mel
front end is numpy (librosa is not a dependency). Scores are metadata: the pipe records them for every segment and
never drops one on their account.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from emilia_pipe.audio import resample
from emilia_pipe.devices import (
    onnx_backend,
    onnx_precision,
    onnx_providers,
    provider_device,
    require_onnx_device,
    torch_device,
)

log = logging.getLogger(__name__)

DNSMOS_SR = 16_000
WINDOW_SAMPLES = 144_160  # 9.01 s, the P.835 model's fixed input
HOP_SAMPLES = DNSMOS_SR  # 1 s between window starts

# P.808 log-mel front end (the model's input is [N, 900, 120]).
N_FFT = 321
MEL_HOP = 160
N_MELS = 120
_P808_TRIM = 160  # the reference drops the window's last 160 samples so centred framing yields exactly 900 frames
_AMIN = 1e-10
_TOP_DB = 80.0

# Non-personalised P.835 fits from raw model output to MOS, highest power first (numpy.polyval order).
_FIT_SIG = (-0.08397278, 1.22083953, 0.0052439)
_FIT_BAK = (-0.13166888, 1.60915514, -0.39604546)
_FIT_OVRL = (-0.06766283, 1.11546468, 0.04602535)


@dataclass(frozen=True)
class DnsmosConfig:
    """Where the ONNX files are and where to run them.

    `device` is `cpu`, `cuda` or `cuda:N` (env `DNSMOS_DEVICE`); a CUDA device that the chosen backend cannot serve
    (ONNX Runtime without its CUDA provider, torch without CUDA) is an error (`DeviceError`), never a quiet CPU run.
    `backend` picks ONNX Runtime or the torch executor of the same files (`auto`: ONNX Runtime on CPU, torch on a
    GPU, with the log-mel front end on the GPU too); `precision` float16 needs torch. `batch_size` is windows
    (9.01 s each) per model call.
    """

    sig_bak_ovr_path: str
    p808_path: str | None = None
    device: str = "cpu"
    batch_size: int = 16
    backend: str = "auto"  # DNSMOS_BACKEND: "onnxruntime" | "torch" | "auto" (devices.onnx_backend)
    precision: str = "auto"  # DNSMOS_PRECISION: "float32" | "float16" | "auto" (devices.onnx_precision)

    @classmethod
    def from_env(
        cls, sig_bak_ovr_path: str, p808_path: str | None = None, env: Mapping[str, str] | None = None
    ) -> DnsmosConfig:
        """The config with `device` taken from `DNSMOS_DEVICE` (default cpu), so a pod picks its GPU by env."""
        env = os.environ if env is None else env
        return cls(sig_bak_ovr_path, p808_path, device=env.get("DNSMOS_DEVICE", "cpu").strip() or "cpu")


def tile_to_window(audio: np.ndarray) -> np.ndarray:
    """Append the clip to itself until it fills one 9.01 s window (the reference's doubling, kept for equal scores)."""
    if audio.size == 0:
        raise ValueError("DNSMOS cannot score an empty clip")
    n = audio.size
    reps = 1
    while n * reps < WINDOW_SAMPLES:
        reps *= 2
    return np.tile(audio, reps) if reps > 1 else audio


def window_starts(n_samples: int) -> list[int]:
    """Start samples of the windows the reference scores for a (tiled) clip of `n_samples` at 16 kHz.

    The reference's count, `int(floor(n / 16000) - 9.01) + 1`, equals `max(whole_seconds - 9, 1)`: it never uses the
    last window that would still fit, which we keep so scores match.
    """
    whole_seconds = n_samples // DNSMOS_SR
    return [i * HOP_SAMPLES for i in range(max(whole_seconds - 9, 1))]


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    mel = hz / f_sp
    above = hz >= min_log_hz
    return np.where(above, min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep, mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(sr: int = DNSMOS_SR, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters, Slaney-normalised (equal area), 0 Hz to Nyquist.

    Built like librosa's `filters.mel` because the P.808 model was trained on librosa features; torchaudio's
    filterbank places the FFT bins differently for an odd n_fft such as 321.
    """
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights


def log_mel(windows: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """P.808 features for a batch: [B, samples] -> [B, frames, n_mels] float32, scaled as DNSMOS scales them.

    Frames are centred (n_fft // 2 zeros each side), so 144 000 samples give 900 frames. Each window's dB values are
    relative to its own maximum and floored 80 dB below it, then mapped by (dB + 40) / 40.
    """
    x = np.asarray(windows, dtype=np.float64)
    pad = N_FFT // 2
    x = np.pad(x, ((0, 0), (pad, pad)))
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT, axis=-1)[:, ::MEL_HOP]
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann, as scipy fftbins=True
    spec = np.fft.rfft(frames * hann, n=N_FFT, axis=-1)
    power = spec.real**2 + spec.imag**2
    mel = power @ filters.T
    db = 10.0 * np.log10(np.maximum(mel, _AMIN))
    ref = np.max(mel, axis=(1, 2), keepdims=True)
    db -= 10.0 * np.log10(np.maximum(ref, _AMIN))
    db = np.maximum(db, db.max(axis=(1, 2), keepdims=True) - _TOP_DB)
    return ((db + 40.0) / 40.0).astype(np.float32)


def log_mel_torch(windows, filters):
    """`log_mel` on a torch device (float32): the same features without moving a batch to the host.

    Matches the numpy reference to float32 rounding (the test bounds the scores' difference).
    """
    import torch

    x = torch.nn.functional.pad(windows.float(), (N_FFT // 2, N_FFT // 2))
    frames = x.unfold(-1, N_FFT, MEL_HOP)
    hann = 0.5 - 0.5 * torch.cos(2.0 * torch.pi * torch.arange(N_FFT, device=x.device, dtype=torch.float32) / N_FFT)
    spec = torch.fft.rfft(frames * hann, n=N_FFT, dim=-1)
    power = spec.real**2 + spec.imag**2
    mel = power @ filters.T
    db = 10.0 * torch.log10(torch.clamp(mel, min=_AMIN))
    ref = torch.amax(mel, dim=(1, 2), keepdim=True)
    db = db - 10.0 * torch.log10(torch.clamp(ref, min=_AMIN))
    db = torch.maximum(db, torch.amax(db, dim=(1, 2), keepdim=True) - _TOP_DB)
    return (db + 40.0) / 40.0


class Dnsmos:
    """Loads the models once per worker; `score` / `score_many` are called per episode's segments."""

    def __init__(self, config: DnsmosConfig):
        if config.batch_size < 1:
            raise ValueError(f"DNSMOS batch_size must be >= 1, got {config.batch_size}")
        self.config = config
        self.backend = onnx_backend(config.backend, config.device, "dnsmos")
        self.precision = onnx_precision(config.precision, self.backend, config.device, "dnsmos")
        self._filters = mel_filterbank()
        self._p808: ort.InferenceSession | None = None
        self._sig_model = self._p808_model = None
        if self.backend == "onnxruntime":
            providers = onnx_providers(config.device, "dnsmos")
            self._sig = ort.InferenceSession(config.sig_bak_ovr_path, providers=providers)
            require_onnx_device(self._sig, config.device, "dnsmos")
            self._sig_input = self._sig.get_inputs()[0].name
            if config.p808_path:
                self._p808 = ort.InferenceSession(config.p808_path, providers=providers)
                self._p808_input = self._p808.get_inputs()[0].name
        else:
            import torch

            from emilia_pipe.onnx_torch import OnnxTorchModel

            self._device = torch_device(config.device, "dnsmos")
            half = self.precision == "float16"
            self._sig_model = OnnxTorchModel(config.sig_bak_ovr_path, self._device, half=half)
            if config.p808_path:
                self._p808_model = OnnxTorchModel(config.p808_path, self._device, half=half)
            self._filters_t = torch.from_numpy(self._filters.astype(np.float32)).to(self._device)

    @property
    def providers(self) -> list[str]:
        """The providers the ONNX Runtime sessions really use (["torch"] for the torch executor)."""
        return ["torch"] if self._sig_model is not None else self._sig.get_providers()

    @property
    def runtime_device(self) -> str:
        """Where the models really run ("cuda" / "cpu"), read back from the loaded runtime."""
        if self._sig_model is not None:
            return self._sig_model.device.type
        return provider_device(self.providers[0])

    @property
    def runtime(self) -> str:
        if self._sig_model is not None:
            return f"torch {self.precision} on {self._sig_model.device}"
        return f"onnxruntime {self.providers[0]} float32"

    def score(self, audio: np.ndarray, sample_rate: int) -> dict[str, float]:
        """{"sig", "bak", "ovrl"} (and "p808" when configured) for one clip of any length > 0."""
        return self.score_many([audio], sample_rate)[0]

    def score_many(self, clips: list[np.ndarray], sample_rate: int) -> list[dict[str, float]]:
        """Scores for each clip, equal to `score` per clip; windows of all clips share batched model calls.

        Many short segments each give a few windows, so batching across clips, not within one, fills the batch.
        """
        if not clips:
            return []
        prepared = [tile_to_window(resample(np.asarray(c, dtype=np.float32), sample_rate, DNSMOS_SR)) for c in clips]
        index = [(ci, start) for ci, clip in enumerate(prepared) for start in window_starts(clip.size)]
        with_p808 = self._p808 is not None or self._p808_model is not None
        step = self.config.batch_size
        batches = (
            np.stack([prepared[ci][s : s + WINDOW_SAMPLES] for ci, s in index[b : b + step]]).astype(
                np.float32, copy=False)
            for b in range(0, len(index), step)
        )
        raw, p808 = self._run_torch(batches) if self._sig_model is not None else self._run_onnxruntime(batches)
        fitted = np.stack(
            [np.polyval(_FIT_SIG, raw[:, 0]), np.polyval(_FIT_BAK, raw[:, 1]), np.polyval(_FIT_OVRL, raw[:, 2])],
            axis=1,
        )
        owner = np.fromiter((ci for ci, _ in index), dtype=np.int64, count=len(index))
        results = []
        for ci in range(len(prepared)):
            mine = owner == ci
            sig, bak, ovrl = fitted[mine].mean(axis=0)
            scores = {"sig": float(sig), "bak": float(bak), "ovrl": float(ovrl)}
            if with_p808:
                scores["p808"] = float(p808[mine].mean())
            results.append(scores)
        return results

    def _run_onnxruntime(self, batches) -> tuple[np.ndarray, np.ndarray | None]:
        raws, p808s = [], []
        for batch in batches:
            raws.append(self._sig.run(None, {self._sig_input: batch})[0].astype(np.float64))
            if self._p808 is not None:
                feats = log_mel(batch[:, :-_P808_TRIM], self._filters)
                p808s.append(self._p808.run(None, {self._p808_input: feats})[0][:, 0].astype(np.float64))
        return np.concatenate(raws), (np.concatenate(p808s) if p808s else None)

    def _run_torch(self, batches) -> tuple[np.ndarray, np.ndarray | None]:
        """Every batch on the device; the raw scores come back to the host once, at the end."""
        import torch

        raws, p808s = [], []
        for batch in batches:
            x = torch.from_numpy(batch).to(self._device, non_blocking=True)
            raws.append(self._sig_model(x)[0])
            if self._p808_model is not None:
                feats = log_mel_torch(x[:, :-_P808_TRIM], self._filters_t)
                p808s.append(self._p808_model(feats)[0][:, 0])
        raw = torch.cat(raws).double().cpu().numpy()
        return raw, (torch.cat(p808s).double().cpu().numpy() if p808s else None)
