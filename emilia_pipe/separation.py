"""Vocals from a mix with a UVR MDX-Net ONNX separator (production: UVR-MDX-NET-Inst_HQ_3), in bounded memory.

The model predicts the *instrumental* spectrogram of a 44.1 kHz stereo window of `WINDOW` samples (~5.9 s):
input `input` [B, 4, 3072, 256] = real/imag of both channels, STFT n_fft 6144, hop 1024, bins from 3072 up (here
only Nyquist) zeroed. Vocals are mix minus instrumental, as in UVR and Amphion's Emilia pipe (no UVR "compensate"
gain).

How an episode is cut, and why the cuts cannot be heard:

* Model windows lie on one grid for the whole episode: window j starts at `j * STEP - LEAD`. Its output is
  weighted by a fixed taper (zero on the `TRIM` samples at each end, where the STFT's reflect padding makes it
  unreliable, raised-cosine ramps of `RAMP` samples, flat between) and overlap-added; neighbouring tapers sum to
  exactly one, as UVR's overlapping windows do, so no window edge is a seam.
* Chunks of `chunk_s` seconds (`overlap_s` shared with the next, raised-cosine cross-faded) decide what is held
  in memory at once. A chunk runs every window of the grid that touches it, fed with the *real* audio around the
  chunk, and keeps the windows that reach into the next chunk for it. So a sample's value does not depend on
  where the chunk borders fall: chunked output equals one-piece output up to float rounding (the test measures
  it), and the cross-fade only blends two equal signals. It stays as insurance for backends whose results vary by
  a rounding error with the batch a window ran in (cuDNN picks kernels by batch size).
* Resampling to 44.1 kHz and back runs through soxr's streaming resampler, which gives the same samples as the
  one-shot call whatever the block sizes; only the chunk being processed is held at 44.1 kHz. Memory is the
  caller's input and the returned array, plus a bound set by `chunk_s` and `batch_windows`, never the episode's
  whole STFT.

Mono input is processed as identical stereo channels and the two predicted instrumentals are averaged in the
spectral domain (the inverse STFT is linear), which halves the inverse transforms.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import soxr
import torch

from emilia_pipe.devices import (
    CUDA_EP,
    cuda_index,
    onnx_backend,
    onnx_precision,
    onnx_providers,
    provider_device,
    require_onnx_device,
    torch_device,
)
from emilia_pipe.onnx_torch import OnnxTorchModel

log = logging.getLogger(__name__)

MODEL_SR = 44_100
N_FFT = 6144
HOP = 1024
DIM_F = 3072
DIM_T = 256
N_BINS = N_FFT // 2 + 1
WINDOW = HOP * (DIM_T - 1)  # samples per model window: 256 STFT frames with center=True
TRIM = N_FFT // 2  # window edge that only reflect padding informs: weight 0
RAMP = 57 * HOP  # cross-fade between neighbouring windows (~1.3 s)
STEP = WINDOW - 2 * TRIM - RAMP  # 192 hops (~4.5 s): windows overlap by ~25 %, a multiple of the STFT hop
LEAD = TRIM + RAMP  # window j starts LEAD samples before the first sample it owns with full weight
_FEED = 1 << 16  # input samples handed to the resampler per call (any size gives the same output)

ENV_MEM_LIMIT_GB = "ORT_CUDA_MEM_LIMIT_GB"
ENV_MEM_LIMIT_FRACTION = "ORT_CUDA_MEM_LIMIT_FRACTION"
ENV_ARENA_EXTEND_STRATEGY = "ORT_CUDA_ARENA_EXTEND_STRATEGY"
ENV_CUDNN_CONV_ALGO_SEARCH = "ORT_CUDNN_CONV_ALGO_SEARCH"
ENV_CUDNN_USE_MAX_WORKSPACE = "ORT_CUDNN_USE_MAX_WORKSPACE"
_ARENA_STRATEGIES = {"knextpoweroftwo": "kNextPowerOfTwo", "ksameasrequested": "kSameAsRequested"}
_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class SeparationConfig:
    model_path: str  # local .onnx path (resolving HF ids is done elsewhere)
    chunk_s: float = 30.0  # SEPARATION_CHUNKS: seconds of audio per processing chunk
    overlap_s: float = 1.0  # overlap between chunks, cross-faded
    batch_windows: int = 4  # model windows per ONNX call
    denoise: bool = False  # average f(x) and -f(-x), as UVR's "denoise": twice the model time
    device: str = "cpu"  # SEPARATION_DEVICE: "cpu" | "cuda" | "cuda:N"
    backend: str = "auto"  # SEPARATION_BACKEND: "onnxruntime" | "torch" | "auto" (devices.onnx_backend)
    precision: str = "auto"  # SEPARATION_PRECISION: "float32" | "float16" | "auto" (devices.onnx_precision)

    def __post_init__(self) -> None:
        """Reject settings that would make chunks overlap three deep or never advance, before a model loads."""
        if not self.chunk_s > 0:
            raise ValueError(f"chunk_s must be > 0, got {self.chunk_s}")
        if not 0 <= self.overlap_s <= self.chunk_s / 2:
            raise ValueError(f"overlap_s must be in [0, chunk_s / 2], got {self.overlap_s} (chunk_s {self.chunk_s})")
        if self.batch_windows < 1:
            raise ValueError(f"batch_windows must be >= 1, got {self.batch_windows}")
        _parse_device(self.device)
        onnx_precision(self.precision, onnx_backend(self.backend, self.device, "separation"), self.device,
                       "separation")


def _parse_device(device: str) -> int | None:
    return cuda_index(device)


def cuda_provider_options_from_env(
    env: Mapping[str, str] = os.environ,
    *,
    device_id: int = 0,
    total_memory_bytes: int | None = None,
) -> dict[str, str | int]:
    """CUDAExecutionProvider options from the deployment's environment; unset (or empty) names keep ORT's defaults.

    The separator shares the GPU with Whisper and pyannote, so operators cap ORT's arena here rather than in code:
    `ORT_CUDA_MEM_LIMIT_GB` (GiB) or `ORT_CUDA_MEM_LIMIT_FRACTION` (of the device's memory, 0 < f <= 1; the total
    comes from `total_memory_bytes` or torch) -> `gpu_mem_limit` in bytes; `ORT_CUDA_ARENA_EXTEND_STRATEGY`
    (kNextPowerOfTwo | kSameAsRequested); `ORT_CUDNN_CONV_ALGO_SEARCH` (EXHAUSTIVE | HEURISTIC | DEFAULT);
    `ORT_CUDNN_USE_MAX_WORKSPACE` (1/0, true/false). A malformed value raises ValueError naming the variable, so
    a typo in a deployment fails at start-up instead of silently running with defaults.
    """

    def get(name: str) -> str | None:
        value = env.get(name)
        return value.strip() if value is not None and value.strip() else None

    options: dict[str, str | int] = {"device_id": device_id}
    gb, fraction = get(ENV_MEM_LIMIT_GB), get(ENV_MEM_LIMIT_FRACTION)
    if gb is not None and fraction is not None:
        raise ValueError(f"set only one of {ENV_MEM_LIMIT_GB} and {ENV_MEM_LIMIT_FRACTION}")
    if gb is not None:
        limit = _number(ENV_MEM_LIMIT_GB, gb)
        if limit <= 0:
            raise ValueError(f"{ENV_MEM_LIMIT_GB} must be > 0, got {gb!r}")
        options["gpu_mem_limit"] = int(limit * 1024**3)
    if fraction is not None:
        share = _number(ENV_MEM_LIMIT_FRACTION, fraction)
        if not 0 < share <= 1:
            raise ValueError(f"{ENV_MEM_LIMIT_FRACTION} must be in (0, 1], got {fraction!r}")
        total = total_memory_bytes
        if total is None and torch.cuda.is_available():
            total = torch.cuda.get_device_properties(device_id).total_memory
        if total is None:
            log.warning("%s=%s ignored: the GPU's memory size is unknown (torch sees no CUDA)",
                        ENV_MEM_LIMIT_FRACTION, fraction)
        else:
            options["gpu_mem_limit"] = int(total * share)
    strategy = get(ENV_ARENA_EXTEND_STRATEGY)
    if strategy is not None:
        if strategy.lower() not in _ARENA_STRATEGIES:
            raise ValueError(f"{ENV_ARENA_EXTEND_STRATEGY} must be one of {sorted(_ARENA_STRATEGIES.values())}, "
                             f"got {strategy!r}")
        options["arena_extend_strategy"] = _ARENA_STRATEGIES[strategy.lower()]
    search = get(ENV_CUDNN_CONV_ALGO_SEARCH)
    if search is not None:
        if search.upper() not in _ALGO_SEARCHES:
            raise ValueError(f"{ENV_CUDNN_CONV_ALGO_SEARCH} must be one of {list(_ALGO_SEARCHES)}, got {search!r}")
        options["cudnn_conv_algo_search"] = search.upper()
    workspace = get(ENV_CUDNN_USE_MAX_WORKSPACE)
    if workspace is not None:
        if workspace.lower() not in _TRUE + _FALSE:
            raise ValueError(f"{ENV_CUDNN_USE_MAX_WORKSPACE} must be 1/0 or true/false, got {workspace!r}")
        options["cudnn_conv_use_max_workspace"] = "1" if workspace.lower() in _TRUE else "0"
    return options


def _number(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def window_weight() -> np.ndarray:
    """The overlap-add taper of one model window; copies placed `STEP` apart sum to exactly 1 (sin² + cos²)."""
    weight = np.zeros(WINDOW, dtype=np.float64)
    rise = np.sin(0.5 * np.pi * (np.arange(RAMP) + 0.5) / RAMP) ** 2
    weight[TRIM:LEAD] = rise
    weight[LEAD : WINDOW - LEAD] = 1.0
    weight[WINDOW - LEAD : WINDOW - TRIM] = rise[::-1]
    return weight.astype(np.float32)


def _window_start(j: int) -> int:
    return j * STEP - LEAD


def _windows_touching(start: int, end: int) -> range:
    """Grid windows whose nonzero weight, [j*STEP - RAMP, (j+1)*STEP), meets the sample range [start, end)."""
    return range(start // STEP, (end + RAMP - 1) // STEP + 1)


def _matches_contract(dims: list) -> bool:
    """[batch, 4, DIM_F, DIM_T], where symbolic (str/None) axes match anything: catches an MDX-Net of another size
    (e.g. dim_f 2048), whose spectrogram layout this module would silently get wrong."""
    if len(dims) != 4:
        return False
    return all(not isinstance(d, int) or d == e for d, e in zip(dims[1:], (4, DIM_F, DIM_T), strict=True))


class _Source:
    """The input as a 44.1 kHz signal read by sample index, resampled on demand and dropped behind the reader.

    Reads outside [0, length) are zeros: the same padding whether the episode is processed in one chunk or many.
    """

    def __init__(self, audio: np.ndarray, sample_rate: int):
        self._audio = audio
        self._stream = (
            None if sample_rate == MODEL_SR
            else soxr.ResampleStream(sample_rate, MODEL_SR, 1, dtype="float32", quality="HQ")
        )
        # Rounded up, so the way back to the input rate never comes out a sample short (soxr itself rounds).
        self.length = audio.shape[0] if self._stream is None else math.ceil(audio.shape[0] * MODEL_SR / sample_rate)
        self._fed = 0  # input samples handed to the resampler
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # 44.1 kHz index of _buf[0]

    def read(self, start: int, end: int) -> np.ndarray:
        out = np.zeros(end - start, dtype=np.float32)
        lo, hi = max(start, 0), min(end, self.length)
        if hi <= lo:
            return out
        if self._stream is None:
            out[lo - start : hi - start] = self._audio[lo:hi]
            return out
        if lo < self._buf_start:
            raise RuntimeError(f"sample {lo} was already dropped (buffer starts at {self._buf_start})")
        self._fill(hi)
        hi_avail = min(hi, self._buf_start + self._buf.shape[0])
        if hi_avail > lo:
            out[lo - start : hi_avail - start] = self._buf[lo - self._buf_start : hi_avail - self._buf_start]
        return out

    def _fill(self, end: int) -> None:
        assert self._stream is not None
        pieces = [self._buf]
        have = self._buf_start + self._buf.shape[0]
        n_in = self._audio.shape[0]
        while have < end and self._fed < n_in:
            block = np.ascontiguousarray(self._audio[self._fed : self._fed + _FEED], dtype=np.float32)
            self._fed += block.shape[0]
            out = self._stream.resample_chunk(block, last=self._fed >= n_in)
            pieces.append(out)
            have += out.shape[0]
        if len(pieces) > 1:
            self._buf = np.concatenate(pieces)

    def drop_before(self, index: int) -> None:
        """Forget samples before `index`, which no later read needs: what keeps memory at one chunk."""
        cut = min(max(index - self._buf_start, 0), self._buf.shape[0])
        if cut:
            self._buf = self._buf[cut:].copy()
            self._buf_start += cut


class _Sink:
    """Collects 44.1 kHz vocals as they are finished and writes them, resampled back, into the caller-sized array."""

    def __init__(self, n_out: int, sample_rate: int):
        self.out = np.zeros(n_out, dtype=np.float32)
        self._stream = (
            None if sample_rate == MODEL_SR
            else soxr.ResampleStream(MODEL_SR, sample_rate, 1, dtype="float32", quality="HQ")
        )
        self._pos = 0

    def write(self, block: np.ndarray, last: bool) -> None:
        if self._stream is not None:
            block = self._stream.resample_chunk(np.ascontiguousarray(block, dtype=np.float32), last=last)
        take = min(block.shape[0], self.out.shape[0] - self._pos)
        self.out[self._pos : self._pos + take] = block[:take]
        self._pos += take


class MdxSeparator:
    """The model, loaded once per worker (ONNX Runtime session or the torch executor); `vocals` is then called for
    each episode.

    With the torch backend the whole window batch (STFT, model, inverse STFT, taper) stays on the stage's device:
    only the mix goes in and the weighted instrumental comes out. With ONNX Runtime the spectrogram crosses to the
    host and back for each batch (ORT's CPU provider, or its CUDA provider with a host copy either way).
    """

    def __init__(self, config: SeparationConfig):
        self.config = config
        device_index = _parse_device(config.device)
        self.backend = onnx_backend(config.backend, config.device, "separation")
        self.precision = onnx_precision(config.precision, self.backend, config.device, "separation")
        self.session = None
        self.model: OnnxTorchModel | None = None
        if self.backend == "onnxruntime":
            options = (None if device_index is None
                       else cuda_provider_options_from_env(os.environ, device_id=device_index))
            self.session = ort.InferenceSession(config.model_path,
                                                providers=onnx_providers(config.device, "separation", options))
            # ORT falls back to CPU silently when CUDA libraries are missing: the session's own list is the truth.
            self.provider = require_onnx_device(self.session, config.device, "separation")
            on_gpu = self.provider == CUDA_EP and torch.cuda.is_available()
            self.torch_device = torch.device(f"cuda:{device_index}" if on_gpu else "cpu")
            model_in, model_out = self.session.get_inputs()[0], self.session.get_outputs()[0]
            self._input_name, self._output_name = model_in.name, model_out.name
            dims = list(model_in.shape)
        else:
            self.torch_device = torch_device(config.device, "separation")
            self.model = OnnxTorchModel(config.model_path, self.torch_device, half=self.precision == "float16")
            self.provider = "torch"
            self._input_name = self.model.input_names[0]
            dims = list(self.model.input_shapes[self._input_name])
        if not _matches_contract(dims):
            raise ValueError(f"{config.model_path}: input {self._input_name} has shape {dims}, expected "
                             f"[batch, 4, {DIM_F}, {DIM_T}] (an MDX-Net with n_fft {N_FFT}, hop {HOP})")
        # A file exported with a fixed batch gets padded batches of exactly that size.
        self._fixed_batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
        self.batch = self._fixed_batch or config.batch_windows
        self._hann = torch.hann_window(N_FFT, periodic=True, device=self.torch_device)
        self._half_weight = torch.from_numpy(window_weight() * np.float32(0.5)).to(self.torch_device)

    @property
    def runtime_device(self) -> str:
        """Where the model really runs ("cuda" / "cpu"), read back from the loaded runtime."""
        if self.model is not None:
            return self.model.device.type
        return provider_device(self.provider)

    @property
    def runtime(self) -> str:
        """The execution path, for logs and benchmark records: backend, precision, device."""
        if self.model is not None:
            return f"torch {self.precision} on {self.model.device}"
        return f"onnxruntime {self.provider} float32"

    def vocals(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono float32 vocals with the input's length and rate: mix minus the model's instrumental."""
        audio = np.asarray(audio)
        if audio.ndim != 1:
            raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if audio.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        source = _Source(audio, sample_rate)
        sink = _Sink(audio.shape[0], sample_rate)
        with torch.inference_mode():
            for block, last in self._vocals_44k(source):
                sink.write(block, last)
        return sink.out

    def _vocals_44k(self, source: _Source) -> Iterator[tuple[np.ndarray, bool]]:
        """Finished 44.1 kHz vocals, chunk by chunk, in order; the flag marks the final block."""
        n = source.length
        chunk = max(1, round(self.config.chunk_s * MODEL_SR))
        overlap = min(round(self.config.overlap_s * MODEL_SR), chunk // 2)
        advance = chunk - overlap
        fade_in = (np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / max(overlap, 1)) ** 2).astype(np.float32)
        done: dict[int, np.ndarray] = {}  # weighted window outputs, by grid index, kept for the next chunk
        tail = np.zeros(0, dtype=np.float32)  # previous chunk's overlap, to cross-fade with this chunk's head
        start = 0
        while True:
            end = min(start + chunk, n)
            last = end >= n
            vocals = source.read(start, end) - self._instrumental(source, start, end, done)
            if tail.shape[0]:
                head = vocals[: tail.shape[0]]
                head *= fade_in
                head += tail * (1.0 - fade_in)
            if last:
                yield vocals, True
                return
            yield vocals[:advance], False
            tail = vocals[advance:].copy()
            start += advance
            first_needed = _windows_touching(start, start + chunk).start
            for j in [j for j in done if j < first_needed]:
                del done[j]
            next_new = max(done) + 1 if done else first_needed
            source.drop_before(min(start, _window_start(next_new)))

    def _instrumental(self, source: _Source, start: int, end: int, done: dict[int, np.ndarray]) -> np.ndarray:
        """Overlap-add of the grid windows over [start, end); windows not in `done` are run (and added to it)."""
        windows = _windows_touching(start, end)
        todo = [j for j in windows if j not in done]
        for i in range(0, len(todo), self.batch):
            batch = todo[i : i + self.batch]
            frames = np.stack([source.read(_window_start(j), _window_start(j) + WINDOW) for j in batch])
            for j, out in zip(batch, self._run_windows(frames), strict=True):
                done[j] = out
        acc = np.zeros(end - start, dtype=np.float32)
        for j in windows:  # ascending j: the same summation order in any chunking
            w0 = _window_start(j)
            lo, hi = max(start, w0 + TRIM), min(end, w0 + WINDOW - TRIM)
            if hi > lo:
                acc[lo - start : hi - start] += done[j][lo - w0 : hi - w0]
        return acc

    def _run_windows(self, frames: np.ndarray) -> np.ndarray:
        """[B, WINDOW] mono mix -> [B, WINDOW] weighted mono instrumental (STFT, model, inverse STFT, taper).

        The tensors are laid out with explicit copies into preallocated buffers rather than stack/cat: on CPU the
        glue around the model otherwise costs a third of the time of a small model.
        """
        count = frames.shape[0]
        x = torch.from_numpy(frames).to(self.torch_device)
        spec = torch.stft(x, N_FFT, HOP, window=self._hann, center=True, return_complex=True)[:, :DIM_F]
        rows = max(count, self._fixed_batch or 0)  # a fixed-batch model gets zero windows as padding
        model_in = torch.zeros((rows, 4, DIM_F, DIM_T), dtype=torch.float32, device=self.torch_device)
        model_in[:count, :2].copy_(torch.view_as_real(spec).permute(0, 3, 1, 2))  # channel 0: real, imag
        model_in[:count, 2:].copy_(model_in[:count, :2])  # mono -> identical stereo channel 1
        pred = self._infer(model_in)
        if self.config.denoise:
            pred = (pred - self._infer(-model_in)) * 0.5
        y = pred[:count]
        # Sum of the two channels' (real, imag) with the Nyquist bin zeroed; the ½ of the mean is in the taper.
        summed = torch.zeros((count, N_BINS, DIM_T, 2), dtype=torch.float32, device=self.torch_device)
        summed[:, :DIM_F].copy_((y[:, 0:2] + y[:, 2:4]).permute(0, 2, 3, 1))
        wave = torch.istft(torch.view_as_complex(summed), N_FFT, HOP, window=self._hann, center=True, length=WINDOW)
        return (wave * self._half_weight).cpu().numpy()

    def _infer(self, model_in: torch.Tensor) -> torch.Tensor:
        """The model's instrumental spectrogram, on the stage's torch device."""
        if self.model is not None:
            return self.model(model_in)[0]
        feed = model_in.cpu().numpy()
        out = self.session.run([self._output_name], {self._input_name: feed})[0]
        return torch.from_numpy(out).to(self.torch_device)
