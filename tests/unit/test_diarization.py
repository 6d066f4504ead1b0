"""pyannote diarization: the turn contract, speaker bounds, offline loading and telemetry.

The pipeline is the random-weight stand-in from `emilia_pipe.tiny.pyannote`, in pyannote 4's real folder format
and loaded by the production `PyannoteDiarizer`. Random weights do not find the real two voices, so the tests
check what the pipe relies on (sorted, non-overlapping turns inside the audio with episode-scoped ids) and not
accuracy.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from pyannote.core import Annotation, Segment

from emilia_pipe import audio as audio_io
from emilia_pipe.diarization import DiarizationConfig, PyannoteDiarizer
from emilia_pipe.segmentation import Span
from emilia_pipe.tiny import pyannote as tiny_pyannote

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SR = audio_io.TARGET_SR  # the pipe hands 24 kHz audio to the diarizer, which resamples to 16 kHz itself
EPISODE = "ep-2024-01"

# Random segmentation can mark a speaker in a single frame; WeSpeaker's stats pooling then warns about std() of one
# value (pyannote handles it). Not something this module tests.
pytestmark = pytest.mark.filterwarnings("ignore:std\\(\\).*degrees of freedom:UserWarning")


def _assert_contract(turns: list[Span], duration_s: float, episode_id: str) -> None:
    ids = re.compile(rf"^{re.escape(episode_id)}_S\d\d$")
    for turn in turns:
        assert 0.0 <= turn.start < turn.end <= duration_s + 1e-6, turn
        assert ids.match(turn.speaker), turn.speaker
    for before, after in zip(turns, turns[1:], strict=False):
        assert before.start <= after.start, "turns not sorted"
        assert before.end <= after.start + 1e-9, f"overlap: {before} / {after}"
    first_seen = list(dict.fromkeys(t.speaker for t in turns))
    assert first_seen == [f"{episode_id}_S{n:02d}" for n in range(len(first_seen))], "ids not in order of appearance"


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A folder name without "pyannote"/"wespeaker": loading must not depend on pyannote's path-substring routing.
    return tiny_pyannote.build(tmp_path_factory.mktemp("diarization"))


@pytest.fixture(scope="module")
def offline() -> Iterator[list]:
    """HF offline mode, telemetry switched *on*, and every internet socket connect refused and recorded.

    The telemetry variable starts as "true" so the test proves the diarizer turns it off; the socket guard catches
    any Hub call or telemetry export, including ones from background threads.
    """
    import huggingface_hub.constants

    attempts: list = []
    real_connect = socket.socket.connect

    def guarded_connect(sock: socket.socket, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"network disabled in test: connect to {address}")
        return real_connect(sock, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
        mp.setenv("PYANNOTE_METRICS_ENABLED", "true")
        mp.setattr(socket.socket, "connect", guarded_connect)
        yield attempts


@pytest.fixture(scope="module")
def episode() -> np.ndarray:
    return audio_io.decode(SAMPLES / "two_voices.mp3", SR)


@pytest.fixture(scope="module")
def bounded(offline: list, tiny_pipeline: Path) -> PyannoteDiarizer:
    """min = max = 2: forces two speakers, so numbering by first appearance is exercised on real output."""
    threads = torch.get_num_threads()
    diarizer = PyannoteDiarizer(DiarizationConfig(model=str(tiny_pipeline), min_speakers=2, max_speakers=2))
    assert torch.get_num_threads() == threads
    return diarizer


@pytest.fixture(scope="module")
def bounded_turns(bounded: PyannoteDiarizer, episode: np.ndarray) -> list[Span]:
    return bounded.turns(episode, SR, EPISODE)


def test_loads_from_local_folder_offline_with_telemetry_off(bounded_turns: list[Span], offline: list) -> None:
    from pyannote.audio.telemetry.metrics import is_metrics_enabled

    assert os.environ["PYANNOTE_METRICS_ENABLED"] == "false"
    assert not is_metrics_enabled()
    assert offline == [], f"network touched: {offline}"


def test_turn_contract_on_two_voices(bounded_turns: list[Span], episode: np.ndarray) -> None:
    assert bounded_turns, "the stand-in model finds speech in a 50 s conversation"
    _assert_contract(bounded_turns, episode.size / SR, EPISODE)


def test_speaker_bounds_reach_pyannote(bounded_turns: list[Span]) -> None:
    # Unbounded, this random model hears one speaker in the whole file; min = max = 2 makes pyannote re-cluster.
    assert {t.speaker for t in bounded_turns} == {f"{EPISODE}_S00", f"{EPISODE}_S01"}


@pytest.mark.filterwarnings("ignore:(?s).*the given bounds:UserWarning")  # 2 s cannot hold 2 speakers
def test_short_and_empty_audio(bounded: PyannoteDiarizer) -> None:
    rng = np.random.default_rng(0)
    short = (rng.standard_normal(SR * 2) * 0.1).astype(np.float32)  # shorter than the 10 s segmentation window
    _assert_contract(bounded.turns(short, SR, "short"), 2.0, "short")
    assert bounded.turns(np.zeros(0, dtype=np.float32), SR, "empty") == []
    with pytest.raises(ValueError, match="mono"):
        bounded.turns(np.zeros((2, SR), dtype=np.float32), SR, "stereo")


class _FakePipeline:
    """Records what the diarizer passes and answers with a fixed (legacy, overlapping) Annotation."""

    def __init__(self, annotation: Annotation):
        self.annotation = annotation
        self.calls: list[tuple[dict, dict]] = []

    def __call__(self, file: dict, **kwargs) -> Annotation:
        self.calls.append((file, kwargs))
        return self.annotation


def test_passes_audio_and_bounds_and_maps_labels(bounded: PyannoteDiarizer, monkeypatch: pytest.MonkeyPatch) -> None:
    annotation = Annotation(uri="x")
    annotation[Segment(3.0, 6.0)] = "SPEAKER_00"
    annotation[Segment(-0.5, 2.0)] = "SPEAKER_07"  # before the start: clipped
    annotation[Segment(5.0, 8.0)] = "SPEAKER_07"  # overlaps the previous turn: trimmed to start at 6.0
    annotation[Segment(9.0, 12.0)] = "SPEAKER_00"  # past the end of the 10 s audio: clipped
    annotation[Segment(10.5, 11.0)] = "SPEAKER_03"  # entirely past the end: dropped
    fake = _FakePipeline(annotation)
    monkeypatch.setattr(bounded, "pipeline", fake)
    monkeypatch.setattr(bounded, "config", DiarizationConfig(model="unused", min_speakers=1, max_speakers=3))

    turns = bounded.turns(np.zeros(SR * 10, dtype=np.float32), SR, "ep")

    ((file, kwargs),) = fake.calls
    assert kwargs == {"min_speakers": 1, "max_speakers": 3}
    assert file["sample_rate"] == 16_000 and file["uri"] == "ep"
    assert tuple(file["waveform"].shape) == (1, 160_000) and file["waveform"].dtype == torch.float32
    assert turns == [
        Span(0.0, 2.0, "ep_S00"),
        Span(3.0, 6.0, "ep_S01"),
        Span(6.0, 8.0, "ep_S00"),
        Span(9.0, 10.0, "ep_S01"),
    ]


def test_config_validates_bounds_and_hides_token() -> None:
    assert "hf_secret" not in repr(DiarizationConfig(hf_token="hf_secret"))
    with pytest.raises(ValueError):
        DiarizationConfig(min_speakers=3, max_speakers=2)
    with pytest.raises(ValueError):
        DiarizationConfig(max_speakers=0)


def test_tiny_build_is_deterministic(tiny_pipeline: Path, tmp_path: Path) -> None:
    again = tiny_pyannote.build(tmp_path / "again")

    def digests(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    assert digests(again) == digests(tiny_pipeline)
    assert (again / "embedding" / "pytorch_model.bin").stat().st_size < 30_000_000
