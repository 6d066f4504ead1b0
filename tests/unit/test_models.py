"""Model sets: the manifest that points every stage at its files, and the download path production uses."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import yaml

from emilia_pipe import models
from emilia_pipe.models import ModelSet, resolve_file
from emilia_pipe.settings import build_pipe_config


@pytest.fixture
def http_root(tmp_path):
    """A static file server on 127.0.0.1 standing in for the DNSMOS download host."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_manifest_round_trips_with_relative_paths_so_the_folder_can_move(tmp_path):
    d = tmp_path / "models"
    (d / "whisper").mkdir(parents=True)
    m = ModelSet(whisper=str(d / "whisper"), diarization="pyannote/speaker-diarization-community-1",
                 separation=str(d / "sep.onnx"), dnsmos_sig_bak_ovr=str(d / "a.onnx"), dnsmos_p808=None, kind="tiny")
    m.save(d)
    assert '"./whisper"' in (d / "models.json").read_text()
    moved = tmp_path / "elsewhere"
    d.rename(moved)
    loaded = ModelSet.load(moved)
    assert loaded.whisper == str((moved / "whisper").resolve())
    assert loaded.diarization == "pyannote/speaker-diarization-community-1"  # Hub ids stay ids
    assert loaded.dnsmos_p808 is None and loaded.kind == "tiny"


def test_missing_manifest_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="models fetch\\|tiny"):
        ModelSet.load(tmp_path)


def test_url_models_download_once_and_a_wrong_checksum_is_refused(http_root, tmp_path, monkeypatch):
    root, base = http_root
    (root / "sig_bak_ovr.onnx").write_bytes(b"pretend model")
    cache = tmp_path / "cache"
    monkeypatch.setitem(models.DNSMOS_FILES, "sig_bak_ovr.onnx", hashlib.sha256(b"pretend model").hexdigest())
    path = resolve_file(base + "sig_bak_ovr.onnx", cache_dir=cache)
    assert Path(path).read_bytes() == b"pretend model"
    (root / "sig_bak_ovr.onnx").write_bytes(b"changed on the server")
    assert Path(resolve_file(base + "sig_bak_ovr.onnx", cache_dir=cache)).read_bytes() == b"pretend model"

    (root / "model_v8.onnx").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        resolve_file(base + "model_v8.onnx", cache_dir=cache)
    assert not list(cache.glob("model_v8.onnx*")), "nothing half-downloaded or unverified is kept"


def test_pyannote_config_sub_models_are_pointed_at_local_copies(tmp_path, monkeypatch):
    pipeline_dir = tmp_path / "pipe"
    pipeline_dir.mkdir()
    (pipeline_dir / "config.yaml").write_text(yaml.safe_dump({"pipeline": {"params": {
        "segmentation": "pyannote/segmentation-3.0", "embedding": "$model/embedding", "clustering": "VBxClustering",
    }}}))
    fetched = []

    def fake_snapshot(repo, token=None, local_dir=None):  # the Hub is not reachable here; record what was asked
        fetched.append(repo)
        Path(local_dir).mkdir(parents=True)
        return str(local_dir)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    models._localize_pyannote_config(pipeline_dir, tmp_path / "deps", token=None)
    params = yaml.safe_load((pipeline_dir / "config.yaml").read_text())["pipeline"]["params"]
    assert fetched == ["pyannote/segmentation-3.0"]
    assert Path(params["segmentation"]).is_dir()
    assert params["embedding"] == "$model/embedding" and params["clustering"] == "VBxClustering"


def test_stages_can_be_switched_off_and_unknown_ones_are_refused(tiny_models):
    m = ModelSet.load(tiny_models)
    config = build_pipe_config(m, stages=["asr"], device="cpu", asr_language="en")
    assert config.stages == ["standardize", "vad", "asr", "export"]
    assert config.separation is None and config.diarization is None and config.dnsmos is None
    with pytest.raises(ValueError, match="unknown stages"):
        build_pipe_config(m, stages=["separate", "karaoke"], device="cpu")
