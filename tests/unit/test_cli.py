import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cli_processes_files_into_the_processed_layout_and_reports_bad_ones(tmp_path, tiny_models):
    bad = tmp_path / "bad.mp3"
    bad.write_text("not audio")
    proc = subprocess.run(
        [sys.executable, "-m", "emilia_pipe", "process", str(ROOT / "samples/long_silence.mp3"), str(bad),
         "--out", str(tmp_path / "out"), "--language", "en", "--models", str(tiny_models)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1  # one file failed
    assert f"{bad}: not a readable audio file" in proc.stderr or f"{bad}: decode failed" in proc.stderr
    (line,) = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    ep_dir = Path(line["dir"])
    assert ep_dir.parent == tmp_path / "out/en"
    doc = json.loads((ep_dir / "all_segments.json").read_text())
    assert len(doc["segments"]) == line["segments"] >= 2
    assert sorted(p.name for p in ep_dir.glob("*.mp3")) == sorted(s["wav"] for s in doc["segments"])
    assert not (tmp_path / "out/.work").exists()
    assert doc["episode"]["stages"] == ["standardize", "separate", "diarize", "vad", "asr", "dnsmos", "export"]
    assert all(s["text"] and s["dnsmos"]["ovrl"] > 0 for s in doc["segments"])
