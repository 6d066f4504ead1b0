"""Code versions: a different model set or pipe gives processed_segments a different version; the same gives the same.

The definitions report the version of the model set in EMILIA_MODELS_DIR (loaded in a fresh interpreter, as a code
server loads them), and the failure rule tells the store's failures from the data's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl

from emilia_assets.versions import process_code_version
from emilia_pipe.catalogue import STATUS_SCHEMA
from emilia_pipe.failures import data_failures, is_transient, worth_retrying

ROOT = Path(__file__).resolve().parents[2]


def model_set(folder: Path, tiny: Path, **changes: str) -> Path:
    """A models.json naming the tiny models by absolute path, with `changes` applied."""
    folder.mkdir(parents=True)
    doc = json.loads((tiny / "models.json").read_text())
    doc = {k: v if k == "kind" or not str(v).startswith("./") else str(tiny / v[2:]) for k, v in doc.items()}
    (folder / "models.json").write_text(json.dumps({**doc, **changes}))
    return folder


def reported_version(models_dir: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EMILIA_MODELS_DIR": str(models_dir)}
    code = ("import dagster as dg; from emilia_assets.gpu_definitions import defs; "
            "a = defs().resolve_assets_def('processed_segments'); "
            "print(a.code_versions_by_key[dg.AssetKey('processed_segments')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_a_different_model_set_gives_a_different_code_version(tmp_path, tiny_models):
    a = model_set(tmp_path / "a", tiny_models)
    same = model_set(tmp_path / "same", tiny_models)
    hub_whisper = model_set(tmp_path / "b", tiny_models, whisper="large-v3")
    assert process_code_version(str(a)) == process_code_version(str(same)), "same models, wherever models.json is"
    assert process_code_version(str(a)) != process_code_version(str(hub_whisper))
    assert process_code_version(str(a)).split(".models-")[0] == process_code_version(None).split(".models-")[0]

    # re-initialised weights under the same names: a new version too
    copy = tmp_path / "copy"
    shutil.copytree(tiny_models / "separation", copy)
    retrained = model_set(tmp_path / "c", tiny_models, separation=str(copy / "tiny_mdx.onnx"))
    assert process_code_version(str(retrained)) == process_code_version(str(a))
    data = bytearray((copy / "tiny_mdx.onnx").read_bytes())
    data[-8:] = bytes(8 - i for i in range(8)) if data[-8:] != bytes(8 - i for i in range(8)) else bytes(8)
    (copy / "tiny_mdx.onnx").write_bytes(bytes(data))
    assert process_code_version(str(retrained)) != process_code_version(str(a))

    # what a code location loaded with that model set reports (the version its materializations record)
    here = os.environ.get("EMILIA_MODELS_DIR") or None
    assert in_process_version() == process_code_version(here)
    assert reported_version(hub_whisper) == process_code_version(str(hub_whisper)) != in_process_version()


def in_process_version() -> str:
    import dagster as dg

    from emilia_assets.gpu_definitions import defs

    return defs().resolve_assets_def("processed_segments").code_versions_by_key[dg.AssetKey("processed_segments")]


def test_only_store_failures_count_as_transient():
    rows = [
        ("a", "failed", "raw_audio/en/s/a.mp3: download failed: EndpointConnectionError: Could not connect"),
        ("b", "failed", "raw_audio/en/s/b.mp3: upload failed: ConnectionClosedError: Connection was closed"),
        ("c", "failed", "raw_audio/en/s/c.mp3: empty file"),
        ("d", "failed", "raw_audio/en/s/d.mp3: worker killed by SIGKILL while processing it, 2 attempts"),
        ("e", "done", None),
    ]
    status = pl.DataFrame([{"episode_id": e, "status": s, "error": err} for e, s, err in rows],
                          schema={k: STATUS_SCHEMA[k] for k in ("episode_id", "status", "error")})
    assert [is_transient(r[2]) for r in rows] == [True, True, False, False, False]
    assert data_failures(status) == 2
    # 4 of 5 failed (over 0.5); without the store's two, 2 of 5 would have passed: worth another attempt
    assert worth_retrying(status, 0.5)
    assert not worth_retrying(status, 0.3)  # 2 of 5 from the data is over 0.3 on its own
    assert not worth_retrying(status.filter(pl.col("episode_id") != "a").filter(pl.col("episode_id") != "b"), 0.5)
