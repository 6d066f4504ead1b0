"""Model sets: the manifest that points every stage at its files, and the download path production uses."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from emilia_pipe import cli, models
from emilia_pipe.models import ModelSet, resolve_file
from emilia_pipe.settings import build_pipe_config

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"


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
    (d / "sep.onnx").write_bytes(b"x")
    (d / "a.onnx").write_bytes(b"x")
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
    models._localize_pyannote_config(pipeline_dir, token=None)
    params = yaml.safe_load((pipeline_dir / "config.yaml").read_text())["pipeline"]["params"]
    assert fetched == ["pyannote/segmentation-3.0"]
    # inside the pipeline's folder, named the way pyannote resolves against that folder: it survives a move
    assert params["segmentation"] == "$model/deps--pyannote--segmentation-3.0"
    assert (pipeline_dir / "deps--pyannote--segmentation-3.0").is_dir()
    assert params["embedding"] == "$model/embedding" and params["clustering"] == "VBxClustering"


def test_stages_can_be_switched_off_and_unknown_ones_are_refused(tiny_models):
    m = ModelSet.load(tiny_models)
    config = build_pipe_config(m, stages=["asr"], device="cpu", asr_language="en")
    assert config.stages == ["standardize", "vad", "asr", "export"]
    assert config.separation is None and config.diarization is None and config.dnsmos is None
    with pytest.raises(ValueError, match="unknown stages"):
        build_pipe_config(m, stages=["separate", "karaoke"], device="cpu")


# --- a model folder works from any working directory and after a move ------------------------------------------

LOCAL_FIELDS = ("whisper", "diarization", "separation", "dnsmos_sig_bak_ovr", "dnsmos_p808")


def _assert_all_inside(m: ModelSet, folder: Path) -> None:
    for name in LOCAL_FIELDS:
        value = Path(getattr(m, name))
        assert value.is_absolute() and value.exists(), (name, value)
        assert value.is_relative_to(folder.resolve()), (name, value)


def test_tiny_models_built_into_a_relative_dir_work_from_anywhere_after_a_move(tmp_path, tiny_models, monkeypatch):
    """`models tiny models/tiny` (what `make setup` runs), moved, then used with `--models ABS` from elsewhere."""
    (tmp_path / "repo/models/tiny/.cache").mkdir(parents=True)
    tiktoken = tiny_models / ".cache" / "multilingual.tiktoken"  # no network: the tokenizer file `make setup` got
    shutil.copyfile(tiktoken, tmp_path / "repo/models/tiny/.cache" / tiktoken.name)
    monkeypatch.chdir(tmp_path / "repo")
    assert cli.main(["models", "tiny", "models/tiny"]) == 0
    doc = json.loads(Path("models/tiny/models.json").read_text())
    assert {doc[k] for k in LOCAL_FIELDS} == {"./whisper", "./diarization", "./separation/tiny_mdx.onnx",
                                             "./dnsmos/sig_bak_ovr.onnx", "./dnsmos/model_v8.onnx"}
    moved = tmp_path / "image" / "models"
    moved.parent.mkdir()
    shutil.move(tmp_path / "repo/models/tiny", moved)
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    _assert_all_inside(ModelSet.load(moved), moved)

    # 4 s of a real episode and no diarization (pyannote alone loads for ~40 s here) keep the run short; the
    # stages that open files by path (ONNX separation and DNSMOS, CTranslate2 Whisper) run
    clip = tmp_path / "clip.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(SAMPLES / "two_voices.mp3"), "-t", "4", "-c", "copy",
                    str(clip)], check=True)
    proc = subprocess.run(
        [sys.executable, "-m", "emilia_pipe", "process", str(clip), "--out", "out", "--language", "en",
         "--models", str(moved), "--stages", "separate,asr,dnsmos"],
        cwd=elsewhere, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    doc = json.loads((Path(line["dir"]) / "all_segments.json").read_text())
    assert doc["episode"]["stages"] == ["standardize", "separate", "vad", "asr", "dnsmos", "export"]


def _legacy_folder(root: Path) -> Path:
    """A folder as `models tiny models/tiny` wrote it before: paths relative to the working directory it ran in."""
    folder = root / "models" / "tiny"
    for rel in ("whisper/model.bin", "diarization/config.yaml", "separation/tiny_mdx.onnx", "dnsmos/sig_bak_ovr.onnx",
                "dnsmos/model_v8.onnx"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    (folder / "models.json").write_text(json.dumps({
        "whisper": "models/tiny/whisper", "diarization": "models/tiny/diarization",
        "separation": "models/tiny/separation/tiny_mdx.onnx",
        "dnsmos_sig_bak_ovr": "models/tiny/dnsmos/sig_bak_ovr.onnx", "dnsmos_p808": "models/tiny/dnsmos/model_v8.onnx",
        "kind": "tiny"}))
    return folder


def test_a_manifest_with_working_directory_paths_still_loads_from_anywhere(tmp_path, monkeypatch):
    folder = _legacy_folder(tmp_path / "repo")
    monkeypatch.chdir(tmp_path)  # not the folder's parent's parent, where those paths were relative to
    m = ModelSet.load(folder)
    _assert_all_inside(m, folder)
    assert m.whisper == str((folder / "whisper").resolve())
    moved = tmp_path / "moved"
    shutil.move(folder, moved)
    _assert_all_inside(ModelSet.load(moved), moved)


def test_a_manifest_path_that_is_nowhere_is_refused_naming_the_file_and_the_path(tmp_path, monkeypatch):
    folder = _legacy_folder(tmp_path / "repo")
    shutil.rmtree(folder / "separation")
    monkeypatch.chdir(tmp_path / "repo")  # even from where the old relative path would have pointed
    with pytest.raises(FileNotFoundError) as err:
        ModelSet.load(folder)
    assert str(folder / "models.json") in str(err.value) and "'models/tiny/separation/tiny_mdx.onnx'" in str(err.value)
    (folder / "models.json").write_text(json.dumps({"whisper": "./gone", "kind": "tiny"}))
    with pytest.raises(FileNotFoundError, match=r"models\.json: whisper path './gone' is missing"):
        ModelSet.load(folder)
    # Hub ids and model sizes are not paths
    (folder / "models.json").write_text(json.dumps({"whisper": "large-v3", "diarization": "pyannote/x-1",
                                                   "separation": "hf://a/b/c.onnx", "kind": "hub"}))
    m = ModelSet.load(folder)
    assert (m.whisper, m.diarization, m.separation) == ("large-v3", "pyannote/x-1", "hf://a/b/c.onnx")


def test_fetch_into_a_relative_dir_writes_a_folder_that_moves(http_root, tmp_path, monkeypatch):
    """`models fetch DIR` with a relative DIR; the Hub is not reachable here, so its two downloads are stand-ins
    that write what they would; DNSMOS comes over real HTTP from 127.0.0.1."""
    root, base = http_root
    for name in models.DNSMOS_FILES:
        (root / name).write_bytes(name.encode())
        monkeypatch.setitem(models.DNSMOS_FILES, name, hashlib.sha256(name.encode()).hexdigest())
    monkeypatch.setattr(models, "_DNSMOS_BASE", base)

    import faster_whisper
    import huggingface_hub

    def fake_whisper(size, output_dir=None):
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "model.bin").write_bytes(size.encode())
        return output_dir

    def fake_snapshot(repo, token=None, local_dir=None):
        Path(local_dir).mkdir(parents=True)
        params = {"segmentation": "pyannote/segmentation-3.0"} if repo.endswith("-pipeline") else {}
        (Path(local_dir) / "config.yaml").write_text(yaml.safe_dump({"pipeline": {"params": params}}))
        return str(local_dir)

    monkeypatch.setattr(faster_whisper, "download_model", fake_whisper)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    separation = tmp_path / "uvr.onnx"
    separation.write_bytes(b"onnx")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    # what `emilia-forge models fetch cache/models` calls, with a local separation file and a pipeline whose
    # config names a Hub sub-model
    models.fetch(Path("cache/models"), defaults=ModelSet(diarization="org/diar-pipeline", separation=str(separation)))
    moved = tmp_path / "image-models"
    shutil.move(tmp_path / "work/cache/models", moved)
    monkeypatch.chdir(tmp_path)
    m = ModelSet.load(moved)
    _assert_all_inside(m, moved)
    assert m.kind == "cached" and Path(m.dnsmos_p808).read_bytes() == b"model_v8.onnx"
    config = yaml.safe_load((Path(m.diarization) / "config.yaml").read_text())
    sub = config["pipeline"]["params"]["segmentation"]
    assert sub.startswith("$model/") and (Path(m.diarization) / sub.removeprefix("$model/")).is_dir()
