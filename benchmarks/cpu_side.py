"""The CPU side of the platform against the plain tools: ffmpeg, tar, Dagster's own cost, the raw-audio sensor on S3.

    .venv/bin/python benchmarks/cpu_side.py audio   [--minutes 5] [--repeat 3]
    .venv/bin/python benchmarks/cpu_side.py shards  [--segments 1000] [--repeat 3]
    .venv/bin/python benchmarks/cpu_side.py dagster [--repeat 2]
    .venv/bin/python benchmarks/cpu_side.py sensor  [--objects 10000 100000]
    .venv/bin/python benchmarks/cpu_side.py smoke   [--out-dir DIR]

Each subcommand measures our code and its baseline in the same process (interleaved when repeated, medians
reported), so the ratios compare across machines; `--smoke` runs a tiny size (tests/unit/test_benchmarks.py keeps
the scripts from rotting). Results go to `benchmarks/out/cpu_side_<topic>.json` unless `--out` says otherwise, with
the machine: CPU model, cores, load average at the start, versions of ffmpeg, soxr, dagster and the rest.

- `audio`: `emilia_pipe.audio.standardize` (PyAV decode, mono, soxr HQ to 24 kHz, loudness) and
  `emilia_pipe.export.write_segments` (LAME at 64 kbps, the exporter's threads) against the `ffmpeg` CLI doing the
  same: decode, soxr resample (precision 20 = soxr HQ) to 24 kHz mono, the same gain, to a float WAV; then the same
  segments to MP3 at the same bitrate and LAME quality, one process per segment on as many threads as the exporter
  (the way a shell pipeline does it) and one process with the segment muxer. Input: the repo's samples concatenated
  and re-encoded as a podcast is published (44.1 kHz stereo MP3, 128 kbps), so resampling and mixdown do real work.
- `shards`: the release's shard writer (`plan_shards` + `write_shard` reading each MP3 through the store, with
  `sample_meta`, as `emilia_publish.release.build_batch` does) on real processed segments (the samples through the
  batch runner, standardize + VAD + export, repeated under distinct ids) against GNU `tar -cf` packing the same MP3
  and JSON files (same member order, ustar, mtime 0, uid/gid 0). The Parquet twin is timed beside, not in the ratio.
- `dagster`: one batch (the four samples) through `processed_segments` materialized on a Dagster instance on disk
  (sqlite under a temp DAGSTER_HOME, in-process executor) against `emilia_pipe.runner.run_batch` called as the asset
  calls it; pipe stages at a minimum (`stages=[]`: standardize, VAD, export), each repeat on a fresh copy of the
  store. A second pair re-runs the finished batch (every episode resumed: no worker starts), i.e. an empty pipe.
- `sensor`: `raw_audio_sensor` evaluated through `build_sensor_context` (as tests/unit/test_raw_audio_sensor.py does)
  on a moto S3 server on 127.0.0.1, at each `--objects` count: the first sweep (ticks until every object is batched)
  and a steady sweep with nothing new, seconds and S3 requests per tick (counted on every botocore client the
  sensor opens). Objects are tiny (the sensor only lists); the population rate is reported too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT_DIR = ROOT / "benchmarks" / "out"
SAMPLES = ROOT / "samples"
SAMPLE_STEMS = ("two_voices", "monologue", "music_bed", "long_silence")
SR = 24_000
BITRATE_KBPS = 64  # the exporter's default (EmiliaPipeResource.mp3_bitrate_kbps)
LAME_QUALITY = 2  # emilia_pipe.export.encode_mp3 sets LAME quality 2; ffmpeg's libmp3lame calls it compression_level


# The machine ---------------------------------------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else None


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What ran it; called first, so the load average is the one the measurement started under."""
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu or platform.processor() or None,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "ffmpeg": _first_line(["ffmpeg", "-hide_banner", "-version"]),
            "tar": _first_line(["tar", "--version"]),
            **{name: _version(name) for name in ("soxr", "av", "lameenc", "dagster", "polars", "pyarrow", "boto3",
                                                   "moto", "numpy")},
        },
    }


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def ffmpeg(*args: str) -> None:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}): {done.stderr[-2000:]}")


# Audio: decode, resample, loudness, MP3 export -------------------------------------------------------------------


def podcast_input(minutes: float, work: Path) -> Path:
    """The samples concatenated to `minutes`, as a podcast host serves them: 44.1 kHz stereo MP3 at 128 kbps."""
    total = sum(_duration(SAMPLES / f"{s}.mp3") for s in SAMPLE_STEMS)
    repeats = int(minutes * 60 // total) + 1
    listing = work / "concat.txt"
    listing.write_text("".join(f"file '{SAMPLES / s}.mp3'\n" for _ in range(repeats) for s in SAMPLE_STEMS))
    out = work / f"podcast_{minutes:g}min.mp3"
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-t", f"{minutes * 60:.3f}", "-ar", "44100", "-ac", "2",
           "-c:a", "libmp3lame", "-b:a", "128k", str(out))
    return out


def _duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def segment_plan(total_s: float) -> list[tuple[float, float]]:
    """Contiguous segments over the audio, 3 to 30 s long (Emilia's bounds), lengths cycling through that range."""
    lengths = (4.0, 11.0, 7.5, 23.0, 3.2, 15.0, 9.0, 29.0, 5.5, 12.5)
    out, t, i = [], 0.0, 0
    while t + 3.0 <= total_s:
        end = min(total_s, t + lengths[i % len(lengths)])
        out.append((t, end))
        t, i = end, i + 1
    return out


def bench_audio(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from emilia_pipe.export import EXPORT_THREADS

    work = Path(tempfile.mkdtemp(prefix="cpu-side-audio-"))
    try:
        src = podcast_input(args.minutes, work)
        audio_s = _duration(src)
        runs: dict[str, list[float]] = {k: [] for k in (
            "ours_standardize", "ours_decode_native", "ours_resample", "ours_loudness", "ffmpeg_standardize",
            "ours_export", "ffmpeg_export_per_segment", "ffmpeg_export_one_process")}
        sizes: dict[str, int] = {}
        wav = work / "ffmpeg_24k_mono.wav"
        for rep in range(args.repeat):
            ours, segments = _audio_round(src, wav, work / f"round{rep}", runs, sizes)
        # Both standardized signals must be the same audio, or the comparison means nothing.
        theirs = np.fromfile(wav, dtype="<f4", offset=_wav_data_offset(wav))
        n = min(len(theirs), len(ours))
        agreement_db = float(10 * np.log10(np.sum(ours[:n] ** 2) / max(np.sum((ours[:n] - theirs[:n]) ** 2), 1e-20)))
        exported_s = sum(s.end - s.start for s in segments)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: median(v) for k, v in runs.items()}
    rows = [
        _row("standardize (decode, mono, 24 kHz, loudness)", med["ours_standardize"], med["ffmpeg_standardize"],
             audio_s, "emilia_pipe.audio.standardize", "ffmpeg -af pan=mono,aresample=24000:resampler=soxr:"
             "precision=20,volume pcm_f32le WAV"),
        _row("MP3 export of the segments, per-segment ffmpeg", med["ours_export"], med["ffmpeg_export_per_segment"],
             exported_s, f"emilia_pipe.export.write_segments ({EXPORT_THREADS} threads)",
             f"one ffmpeg -ss -t libmp3lame -b:a {BITRATE_KBPS}k per segment, {EXPORT_THREADS} at a time"),
        _row("MP3 export of the segments, one ffmpeg", med["ours_export"], med["ffmpeg_export_one_process"],
             exported_s, f"emilia_pipe.export.write_segments ({EXPORT_THREADS} threads)",
             f"one ffmpeg libmp3lame -b:a {BITRATE_KBPS}k -f segment"),
        _row("standardize + export (per-segment ffmpeg)", med["ours_standardize"] + med["ours_export"],
             med["ffmpeg_standardize"] + med["ffmpeg_export_per_segment"], audio_s, "both", "both"),
    ]
    return {
        "config": {"minutes": args.minutes, "repeat": args.repeat, "bitrate_kbps": BITRATE_KBPS,
                   "lame_quality": LAME_QUALITY, "export_threads": EXPORT_THREADS, "segments": len(segments),
                   "input": "samples/*.mp3 concatenated, 44.1 kHz stereo MP3 128 kbps (ffmpeg libmp3lame)"},
        "audio_s": round(audio_s, 3),
        "exported_audio_s": round(exported_s, 3),
        "ffmpeg_vs_ours_snr_db": round(agreement_db, 1),
        "ours_breakdown_s": {k: med[k] for k in ("ours_decode_native", "ours_resample", "ours_loudness")},
        "sizes": sizes,
        "median_s": med,
        "runs_s": {k: [round(x, 4) for x in v] for k, v in runs.items()},
        "rows": rows,
        "ratio_note": "ratio = ours seconds / ffmpeg seconds (below 1: ours is faster); realtime = audio seconds "
                      "per wall second",
    }


def _audio_round(src: Path, wav: Path, work: Path, runs: dict[str, list[float]],
                 sizes: dict[str, int]) -> tuple[Any, list[Any]]:
    """One round of every audio measurement; appends the seconds to `runs`, returns our standardized audio and the
    segments."""
    from emilia_pipe.audio import decode, normalize_loudness, resample, rms_dbfs, standardize
    from emilia_pipe.export import EXPORT_THREADS, Segment, write_segments

    # standardize: ours, then ffmpeg with our mixdown (mean of the channels) and the gain ours applied (measuring
    # the loudness is ours alone, and cheap: see ours_loudness)
    t, ours = timed(lambda: standardize(src))
    runs["ours_standardize"].append(t)
    t, native = timed(lambda: decode(src, sample_rate=44_100))
    runs["ours_decode_native"].append(t)
    t, resampled = timed(lambda: resample(native, 44_100, SR))
    runs["ours_resample"].append(t)
    t, _ = timed(lambda: normalize_loudness(resampled, SR))
    runs["ours_loudness"].append(t)
    gain_db = rms_dbfs(ours) - rms_dbfs(resampled)
    t, _ = timed(lambda: ffmpeg("-i", str(src), "-af", f"pan=mono|c0=0.5*c0+0.5*c1,"
                                f"aresample={SR}:resampler=soxr:precision=20,volume={gain_db:.4f}dB",
                                "-c:a", "pcm_f32le", str(wav)))
    runs["ffmpeg_standardize"].append(t)
    segments = [Segment(id=f"seg{i:05d}", start=a, end=b, speaker="S00", language="en")
                for i, (a, b) in enumerate(segment_plan(len(ours) / SR))]

    # export: the same segments of the same audio (ours from memory, ffmpeg's from its own WAV)
    ours_dir, per_dir, one_dir = (work / name for name in ("ours", "per", "one"))
    t, files = timed(lambda: write_segments(ours_dir, ours, SR, segments, BITRATE_KBPS))
    runs["ours_export"].append(t)
    sizes["ours_export_bytes"] = sum(p.stat().st_size for p in files)
    sizes["ours_export_files"] = len(files)

    def per_segment(seg: Segment) -> Path:
        path = per_dir / f"{seg.id}.mp3"
        ffmpeg("-ss", f"{seg.start:.3f}", "-t", f"{seg.end - seg.start:.3f}", "-i", str(wav), "-c:a", "libmp3lame",
               "-b:a", f"{BITRATE_KBPS}k", "-compression_level", str(LAME_QUALITY), str(path))
        return path

    per_dir.mkdir(parents=True)
    with ThreadPoolExecutor(max_workers=max(1, min(EXPORT_THREADS, len(segments)))) as pool:
        t, per_files = timed(lambda: list(pool.map(per_segment, segments)))
    runs["ffmpeg_export_per_segment"].append(t)
    sizes["ffmpeg_export_per_segment_bytes"] = sum(p.stat().st_size for p in per_files)
    one_dir.mkdir()
    times = ",".join(f"{s.start:.3f}" for s in segments[1:])
    t, _ = timed(lambda: ffmpeg("-i", str(wav), "-t", f"{segments[-1].end:.3f}", "-c:a", "libmp3lame",
                                "-b:a", f"{BITRATE_KBPS}k", "-compression_level", str(LAME_QUALITY),
                                "-f", "segment", "-segment_times", times, str(one_dir / "seg%05d.mp3")))
    runs["ffmpeg_export_one_process"].append(t)
    one_files = sorted(one_dir.glob("*.mp3"))
    sizes["ffmpeg_export_one_process_bytes"] = sum(p.stat().st_size for p in one_files)
    sizes["ffmpeg_export_one_process_files"] = len(one_files)
    shutil.rmtree(work)
    return ours, segments


def _row(what: str, ours_s: float, base_s: float, audio_s: float, ours: str, base: str) -> dict[str, Any]:
    return {"what": what, "ours": ours, "baseline": base, "ours_s": round(ours_s, 3), "baseline_s": round(base_s, 3),
            "ours_realtime": round(audio_s / ours_s, 1), "baseline_realtime": round(audio_s / base_s, 1),
            "ratio": round(ours_s / base_s, 2)}


def _wav_data_offset(path: Path) -> int:
    """Where the samples start in ffmpeg's WAV (after the `data` chunk header; ffmpeg may add a LIST chunk)."""
    head = path.read_bytes()[:4096]
    return head.index(b"data") + 8


# Shards: the release's tar writer against tar ------------------------------------------------------------------


def seed_batch(work: Path, stems: tuple[str, ...] = SAMPLE_STEMS) -> tuple[Any, str, Path]:
    """A local store with the samples under raw_audio/ and one batch manifest of them; returns the store, the batch
    id and the store's root."""
    from emilia_pipe.batching import Batch, manifest_frame, manifest_key, new_batch_id
    from emilia_store import LocalStore, write_parquet

    root = work / "store"
    store = LocalStore(root)
    for stem in stems:
        key = f"raw_audio/en/show/{stem}.mp3"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLES / f"{stem}.mp3", root / key)
    objects = [o for o in _iter(store, "raw_audio/")]
    batch = Batch(new_batch_id(objects, time.time()), objects)
    write_parquet(store, manifest_key(batch.batch_id), manifest_frame(batch, "raw_audio/"))
    return store, batch.batch_id, root


def _iter(store: Any, prefix: str) -> list[Any]:
    from emilia_store import iter_objects

    return list(iter_objects(store, prefix))


def run_batch_as_the_asset_does(store: Any, batch_id: str, on_event: Callable[[Any], None] | None = None) -> Any:
    """What `processed_segments` calls, with the same resources' defaults and `stages=[]`."""
    from emilia_assets.assets.process import _probes
    from emilia_pipe.batching import read_manifest
    from emilia_pipe.runner import Episode, run_batch
    from emilia_pipe.workdir import batch_dir
    from resources.gpu_pool import GpuPoolResource
    from resources.pipe import EmiliaPipeResource

    pipe, gpu_pool = EmiliaPipeResource(stages=[]), GpuPoolResource()
    episodes = [Episode.from_row(r) for r in read_manifest(store, batch_id).iter_rows(named=True)]
    plan = gpu_pool.plan(pipe.device)
    return run_batch(batch_id, episodes, store, store, "processed/", pipe.pipe_config(device=plan.device), plan,
                     batch_dir(batch_id), probes=_probes(store, batch_id), settings=gpu_pool.runner_settings(),
                     on_event=on_event)


def _processed_segments(work: Path, source: str) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Catalogue rows and MP3s of the samples. `runner`: through the batch runner as `processed_segments` runs it
    (standardize, VAD, export; a worker process that imports torch). `exporter`: standardize and the exporter over
    fixed 3-30 s cuts, in this process, without torch (for --smoke)."""
    from emilia_store import read_parquet
    from emilia_store.layout import batch_segments_key

    if source == "runner":
        store, batch_id, _ = seed_batch(work)
        outcome = run_batch_as_the_asset_does(store, batch_id)
        if outcome.count("failed"):
            raise RuntimeError(f"the sample batch did not process: {outcome.status.to_dicts()}")
        rows = read_parquet(store, batch_segments_key("processed/", batch_id)).sort("id").to_dicts()
        return rows, [store.get_bytes(r["mp3_key"]) for r in rows]
    from emilia_pipe.audio import standardize
    from emilia_pipe.export import Segment, write_segments

    rows, mp3s = [], []
    for stem in SAMPLE_STEMS:
        audio = standardize(SAMPLES / f"{stem}.mp3")
        segments = [Segment(id=f"{stem}_{i:06d}", start=a, end=b, speaker=f"{stem}_S00", language="en")
                    for i, (a, b) in enumerate(segment_plan(len(audio) / SR))]
        for seg, path in zip(segments, write_segments(work / stem, audio, SR, segments, BITRATE_KBPS), strict=True):
            rows.append({**seg.to_json(), "episode_id": stem, "source": "show", "batch_id": "bench",
                         "dnsmos_sig": None, "dnsmos_bak": None, "dnsmos_ovrl": None})
            mp3s.append(path.read_bytes())
    return rows, mp3s


def bench_shards(args: argparse.Namespace) -> dict[str, Any]:
    import polars as pl

    from emilia_pipe.shards import Sample, plan_shards, write_shard
    from emilia_publish.parquet import shard_to_parquet
    from emilia_publish.release import PublishSettings, sample_meta
    from emilia_store import LocalStore

    work = Path(tempfile.mkdtemp(prefix="cpu-side-shards-"))
    os.environ.setdefault("EMILIA_WORK_DIR", str(work / "scratch"))
    try:
        real, mp3s = _processed_segments(work, args.source)
        # `args.segments` samples: the real segments repeated under distinct ids, in a store of their own
        shard_store = LocalStore(work / "shard_store")
        files = work / "files"  # the same samples as plain files, for tar
        files.mkdir()
        rows, names = [], []
        for i in range(args.segments):
            row = dict(real[i % len(real)])
            row["id"] = f"{row['episode_id']}_{i:06d}"
            row["mp3_key"] = f"processed/en/{row['episode_id']}/{row['id']}.mp3"
            mp3 = mp3s[i % len(real)]
            shard_store.put_bytes(row["mp3_key"], mp3)
            (files / f"{row['id']}.mp3").write_bytes(mp3)
            (files / f"{row['id']}.json").write_bytes(
                json.dumps(sample_meta(row), ensure_ascii=False, sort_keys=True).encode())
            rows.append(row)
            names += [f"{row['id']}.mp3", f"{row['id']}.json"]
        rows.sort(key=lambda r: r["id"])
        names.sort(key=lambda n: (n.rsplit(".", 1)[0], n.endswith(".json")))  # write_shard's order: mp3, then json
        listing = work / "members.txt"
        listing.write_text("".join(n + "\n" for n in names))
        payload = sum((files / n).stat().st_size for n in names)
        settings = PublishSettings()
        by_id = {r["id"]: r for r in rows}

        def ours(out: Path) -> list[Path]:
            sizes = {o.key: o.size for o in _iter(shard_store, "processed/en/")}
            plan = plan_shards(((k, sizes[by_id[k]["mp3_key"]]) for k in sorted(by_id)), settings.max_shard_bytes,
                               settings.max_shard_samples)
            paths = []
            for n, shard in enumerate(plan):
                path = out / f"{n:06d}.tar"
                write_shard(path, (Sample(k, shard_store.get_bytes(by_id[k]["mp3_key"]), sample_meta(by_id[k]))
                                   for k in shard))
                paths.append(path)
            return paths

        def plain_tar(out: Path) -> list[Path]:
            path = out / "plain.tar"
            done = subprocess.run(["tar", "-cf", str(path), "--format=ustar", "--mtime=@0", "--owner=0",
                                   "--group=0", "--numeric-owner", "-C", str(files), "-T", str(listing)],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"tar failed: {done.stderr[-2000:]}")
            return [path]

        for path in [*files.iterdir(), *(work / "shard_store").rglob("*.mp3")]:  # same page cache for both
            path.read_bytes()
        runs: dict[str, list[float]] = {"ours": [], "tar": [], "parquet_twin": []}
        digests: dict[str, list[str]] = {}
        out_bytes: dict[str, int] = {}
        for rep in range(args.repeat):
            for name, fn in (("ours", ours), ("tar", plain_tar)) if rep % 2 == 0 else (("tar", plain_tar),
                                                                                        ("ours", ours)):
                out = work / f"{name}{rep}"
                out.mkdir()
                t, paths = timed(lambda fn=fn, out=out: fn(out))
                runs[name].append(t)
                out_bytes[name] = sum(p.stat().st_size for p in paths)
                digests[name] = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
                out_bytes[f"{name}_files"] = len(paths)
                if name == "ours":
                    t, _ = timed(lambda paths=paths, out=out: [shard_to_parquet(p, out / f"{p.stem}.parquet")
                                                                for p in paths])
                    runs["parquet_twin"].append(t)
                    members = _members(paths)
                else:
                    plain_members = _members(paths)
                shutil.rmtree(out)
        same_members = members == plain_members
        if not same_members:
            raise RuntimeError("the two tars hold different members")
        real_stats = pl.DataFrame(real).select(pl.col("duration").mean().alias("mean_s"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: median(v) for k, v in runs.items()}
    return {
        "config": {"segments": args.segments, "repeat": args.repeat, "real_segments": len(real),
                   "source_kind": args.source,
                   "max_shard_bytes": settings.max_shard_bytes, "max_shard_samples": settings.max_shard_samples,
                   "source": "samples/*.mp3 through run_batch (stages=[]) or the exporter (--source), segments "
                             "repeated under distinct ids"},
        "mean_segment_s": round(real_stats["mean_s"][0], 2),
        "payload_bytes": payload,
        "out_bytes": out_bytes,
        "same_members": same_members,
        # one shard each (below max_shard_bytes): the same bytes as GNU tar's, or not
        "identical_bytes": digests["ours"] == digests["tar"],
        "median_s": med,
        "runs_s": {k: [round(x, 4) for x in v] for k, v in runs.items()},
        "rows": [{
            "what": f"{args.segments} segments into WebDataset tars", "ours": "plan_shards + write_shard",
            "baseline": "tar -cf --format=ustar -T list", "ours_s": med["ours"], "baseline_s": med["tar"],
            "ratio": round(med["ours"] / med["tar"], 2), "ours_bytes": out_bytes["ours"],
            "baseline_bytes": out_bytes["tar"], "ours_mib_per_s": round(payload / 2**20 / med["ours"], 1),
            "baseline_mib_per_s": round(payload / 2**20 / med["tar"], 1),
            "parquet_twin_s": med["parquet_twin"],
        }],
        "ratio_note": "ratio = ours seconds / tar seconds",
    }


def _members(paths: list[Path]) -> list[tuple[str, int]]:
    import tarfile

    out = []
    for path in paths:
        with tarfile.open(path) as tar:
            out += [(m.name, m.size) for m in tar.getmembers()]
    return sorted(out)


# Dagster: processed_segments on an instance against the runner alone ---------------------------------------------


def bench_dagster(args: argparse.Namespace) -> dict[str, Any]:
    import dagster as dg

    from emilia_assets.assets.ingest import raw_episodes
    from emilia_assets.assets.process import processed_segments
    from emilia_assets.assets.publish import hf_shards
    from emilia_assets.partitions import episode_batches
    from emilia_store import LocalStore
    from resources.gpu_pool import GpuPoolResource
    from resources.huggingface import HuggingFaceResource
    from resources.object_store import ObjectStoreResource
    from resources.pipe import EmiliaPipeResource

    work = Path(tempfile.mkdtemp(prefix="cpu-side-dagster-"))
    os.environ["EMILIA_WORK_DIR"] = str(work / "scratch")
    stems = SAMPLE_STEMS[: args.episodes]
    try:
        _, batch_id, template = seed_batch(work / "template", stems)
        home = work / "dagster_home"
        home.mkdir()
        with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
            instance.add_dynamic_partitions(episode_batches.name, [batch_id])

            def dagster_run(root: Path) -> dict[str, Any]:
                result = dg.materialize(
                    [raw_episodes, processed_segments, hf_shards], selection=[processed_segments],
                    partition_key=batch_id, instance=instance,
                    resources={"store": ObjectStoreResource(local_root=str(root)),
                               "pipe": EmiliaPipeResource(stages=[]), "hf": HuggingFaceResource(),
                               "gpu_pool": GpuPoolResource()},
                )
                meta = result.asset_materializations_for_node("processed_segments")[0].metadata
                return {k: meta[k].value for k in ("done", "resumed", "failed", "segments")}

            def runner_run(root: Path) -> dict[str, Any]:
                outcome = run_batch_as_the_asset_does(LocalStore(root), batch_id)
                return {"done": outcome.count("done"), "resumed": outcome.count("resumed"),
                        "failed": outcome.count("failed"), "segments": outcome.segments.height}

            runs: dict[str, list[float]] = {k: [] for k in ("runner", "dagster", "runner_resumed", "dagster_resumed")}
            counts: dict[str, dict[str, Any]] = {}
            # Warm-up, not counted: the first worker start reads torch and the VAD from disk. Its output is the store
            # the resumed runs start from.
            processed = work / "processed"
            shutil.copytree(template, processed)
            warmup_s, counts["warmup"] = timed(lambda: runner_run(processed))
            order = (("runner", runner_run), ("dagster", dagster_run))
            for rep in range(max(args.repeat, args.repeat_resumed)):
                for name, fn in order if rep % 2 == 0 else order[::-1]:
                    if rep < args.repeat:  # the batch from its raw audio
                        root = work / f"{name}{rep}"
                        shutil.copytree(template, root)
                        t, counts[name] = timed(lambda fn=fn, root=root: fn(root))
                        runs[name].append(t)
                        shutil.rmtree(root)
                    if rep < args.repeat_resumed:  # the finished batch again: every episode resumed, an empty pipe
                        root = work / f"{name}{rep}_resumed"
                        shutil.copytree(processed, root)
                        t, counts[f"{name}_resumed"] = timed(lambda fn=fn, root=root: fn(root))
                        runs[f"{name}_resumed"].append(t)
                        shutil.rmtree(root)
            dagster_runs = len(instance.get_run_records())
        for name, c in counts.items():
            want = "resumed" if name.endswith("_resumed") else "done"
            if c["failed"] or c[want] != len(stems):
                raise RuntimeError(f"{name}: the batch did not process as expected: {c}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: median(v) for k, v in runs.items() if v}
    audio_s = sum(_duration(SAMPLES / f"{s}.mp3") for s in stems)
    rows = []
    for key, what in (("", f"batch of {len(stems)} episodes ({audio_s:.0f} s of audio), stages=[]"),
                      ("_resumed", "the same batch finished: every episode resumed, no worker starts (empty pipe)")):
        if f"dagster{key}" in med:
            ours, base = med[f"dagster{key}"], med[f"runner{key}"]
            rows.append({"what": what, "ours": "dg.materialize(processed_segments)", "baseline": "run_batch",
                         "ours_s": ours, "baseline_s": base, "overhead_s": round(ours - base, 3),
                         "ratio": round(ours / base, 2)})
    return {
        "config": {"repeat": args.repeat, "repeat_resumed": args.repeat_resumed, "episodes": len(stems),
                   "audio_s": round(audio_s, 2), "stages": [],
                   "instance": "DagsterInstance.local_temp (sqlite on disk), dg.materialize, in-process executor",
                   "pipe": "EmiliaPipeResource(stages=[]): standardize, VAD, export; GpuPoolResource() defaults"},
        "dagster_runs_recorded": dagster_runs,
        "warmup_s": round(warmup_s, 3),
        "counts": counts,
        "median_s": med,
        "runs_s": {k: [round(x, 4) for x in v] for k, v in runs.items()},
        "rows": rows,
        "ratio_note": "ratio = Dagster seconds / runner seconds; overhead_s = their difference per run",
    }


# Sensor: raw_audio_sensor on a moto S3 server ----------------------------------------------------------------------


class RequestCounter:
    """Counts the S3 API calls of every boto3 client `S3Settings.client` builds (the sensor opens one per tick), and
    the seconds spent inside them (request sent to response parsed): the rest of a tick is the sensor's own time."""

    def __init__(self) -> None:
        from emilia_store import S3Settings

        self.calls: Counter[str] = Counter()
        self.seconds = 0.0
        self._lock = threading.Lock()
        real = S3Settings.client

        def client(settings: Any) -> Any:
            c = real(settings)
            c.meta.events.register("before-call.s3", self._before)
            c.meta.events.register("after-call.s3", self._after)
            return c

        S3Settings.client = client  # type: ignore[method-assign]

    def _before(self, event_name: str, context: dict[str, Any], **_: Any) -> None:
        context["bench_t0"] = time.perf_counter()
        with self._lock:
            self.calls[event_name.rsplit(".", 1)[-1]] += 1

    def _after(self, context: dict[str, Any], **_: Any) -> None:
        if "bench_t0" in context:
            with self._lock:
                self.seconds += time.perf_counter() - context.pop("bench_t0")

    def take(self) -> tuple[dict[str, int], float]:
        with self._lock:
            out, seconds, self.calls, self.seconds = dict(self.calls), self.seconds, Counter(), 0.0
        return out, seconds


def raw_key(i: int) -> str:
    """Keys laid out as tests/unit/test_raw_audio_sensor.py lays them out: two languages, 50 sources."""
    return f"raw_audio/{'de' if i % 3 == 0 else 'en'}/src{i % 50:03d}/ep{i:07d}.mp3"


def populate(endpoint: str, bucket: str, n: int, threads: int, how: str) -> float:
    """`n` tiny raw-audio objects (the sensor only lists); returns the seconds.

    `http`: put_object calls from `threads` threads, through the server. `backend`: straight into the in-process
    moto server's S3 backend (the same objects, the server then lists them over HTTP like any other), about 25 times
    faster here, which is what makes 100,000 objects practical.
    """
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench", config=Config(max_pool_connections=threads * 2))
    client.create_bucket(Bucket=bucket)
    t0 = time.perf_counter()
    if how == "backend":
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        for i in range(n):
            backend.put_object(bucket, raw_key(i), b"x" * (100 + i % 7))
    else:
        def put(i: int) -> None:
            client.put_object(Bucket=bucket, Key=raw_key(i), Body=b"x" * (100 + i % 7))

        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(put, range(n), chunksize=256):
                pass
    seconds = time.perf_counter() - t0
    listed = client.list_objects_v2(Bucket=bucket, Prefix="raw_audio/", MaxKeys=1)
    if not listed.get("KeyCount"):
        raise RuntimeError(f"bucket {bucket}: the {n} objects put are not listed by the server")
    return seconds


def bench_sensor(args: argparse.Namespace) -> dict[str, Any]:
    import dagster as dg
    from moto.server import ThreadedMotoServer

    from emilia_assets.definitions import defs
    from emilia_pipe.batching import ScanCursor
    from resources.batching import BatchingResource
    from resources.object_store import ObjectStoreResource
    from sensors.raw_audio import raw_audio_sensor

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log: one line a request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    counter = RequestCounter()
    batching = BatchingResource()  # the production defaults: 1,000 keys a page, 5 pages a tick, 200 episodes a batch
    definitions = defs()
    sizes = []
    try:
        for n in args.objects:
            bucket = f"bench-{n}"
            populate_s = populate(endpoint, bucket, n, args.threads, args.populate)
            store = ObjectStoreResource(bucket=bucket, endpoint_url=endpoint, access_key_id="bench",
                                        secret_access_key="bench", region_name="us-east-1")
            with dg.instance_for_test() as instance:
                cursor: str | None = None
                sweeps: list[list[dict[str, Any]]] = [[], []]
                counter.take()
                for sweep in (0, 1):
                    while True:
                        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=definitions,
                                                      resources={"store": store, "batching": batching})
                        t, result = timed(lambda ctx=ctx: raw_audio_sensor(ctx))
                        requests, in_requests = counter.take()
                        t_add, _ = timed(lambda result=result: [
                            instance.add_dynamic_partitions(r.partitions_def_name, list(r.partition_keys))
                            for r in result.dynamic_partitions_requests])
                        cursor = result.cursor
                        sweeps[sweep].append({"s": round(t, 4), "in_requests_s": round(in_requests, 4),
                                              "add_partitions_s": round(t_add, 4),
                                              "runs": len(result.run_requests), "requests": requests})
                        if ScanCursor.loads(cursor).sweep > sweep:
                            break
                        if sweep == 1 and len(sweeps[1]) == args.steady_ticks:
                            break  # enough of a sweep that finds nothing new
                        if len(sweeps[sweep]) > n // 1000 + 20:
                            raise RuntimeError(f"sweep {sweep} of {n} objects did not end")
                batched = sum(t["runs"] for t in sweeps[0])
                if sum(t["runs"] for t in sweeps[1]):
                    raise RuntimeError("the steady sweep batched objects again")
            sizes.append({"objects": n, "populate_s": round(populate_s, 2),
                          "populate_objects_per_s": round(n / populate_s, 1), "batches": batched,
                          "first_sweep": _sweep_summary(sweeps[0]), "steady_sweep": _sweep_summary(sweeps[1]),
                          "ticks": {"first": sweeps[0], "steady": sweeps[1]}})
            print(f"{n} objects: first sweep {sizes[-1]['first_sweep']['total_s']} s in "
                  f"{sizes[-1]['first_sweep']['ticks']} ticks, steady tick median "
                  f"{sizes[-1]['steady_sweep']['tick_s_median']} s", flush=True)
    finally:
        server.stop()
    base = sizes[0]
    for row in sizes:
        row["steady_tick_ratio_to_smallest"] = round(row["steady_sweep"]["tick_s_median"]
                                                     / base["steady_sweep"]["tick_s_median"], 2)
        row["first_sweep_per_object_ratio_to_smallest"] = round(
            (row["first_sweep"]["total_s"] / row["objects"]) / (base["first_sweep"]["total_s"] / base["objects"]), 2)
    return {
        "config": {"objects": args.objects, "populate": args.populate, "populate_threads": args.threads,
                   "steady_ticks": args.steady_ticks, "page_size": batching.page_size,
                   "max_pages_per_tick": batching.max_pages_per_tick, "max_episodes": batching.max_episodes,
                   "server": "moto ThreadedMotoServer on 127.0.0.1, in this process",
                   "evaluation": "dg.build_sensor_context(instance_for_test, definitions=defs()) + raw_audio_sensor"},
        "sizes": sizes,
        "ratio_note": "ratios against the smallest object count of the same invocation",
    }


def _sweep_summary(ticks: list[dict[str, Any]]) -> dict[str, Any]:
    times = [t["s"] for t in ticks]
    own = [t["s"] - t["in_requests_s"] for t in ticks]
    per_tick = [sum(t["requests"].values()) for t in ticks]
    ops: Counter[str] = Counter()
    for t in ticks:
        ops.update(t["requests"])
    return {"ticks": len(ticks), "total_s": round(sum(times), 3), "tick_s_median": median(times),
            "tick_s_max": round(max(times), 4), "tick_own_s_median": median(own),
            "tick_in_requests_s_median": median([t["in_requests_s"] for t in ticks]),
            "requests_per_tick_median": statistics.median(per_tick),
            "requests_per_tick_max": max(per_tick), "requests_by_operation": dict(ops),
            "add_partitions_s": round(sum(t["add_partitions_s"] for t in ticks), 3)}


# Command line --------------------------------------------------------------------------------------------------


SMOKE = {"audio": {"minutes": 0.25, "repeat": 1}, "shards": {"segments": 30, "repeat": 1, "source": "exporter"},
         "dagster": {"repeat": 0, "repeat_resumed": 1, "episodes": 1},
         "sensor": {"objects": [200, 1200], "threads": 8, "populate": "backend", "steady_ticks": 0}}
BENCHES = {"audio": bench_audio, "shards": bench_shards, "dagster": bench_dagster, "sensor": bench_sensor}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="topic", required=True)
    every = sub.add_parser("smoke", help="every topic at its smoke size, in this one process (what the test runs)")
    every.add_argument("--out-dir", type=Path, default=OUT_DIR / "smoke")
    for topic in BENCHES:
        p = sub.add_parser(topic)
        p.add_argument("--out", type=Path, default=None, help=f"default benchmarks/out/cpu_side_{topic}.json")
        p.add_argument("--smoke", action="store_true", help="a tiny size, to check the script still runs")
        if topic == "audio":
            p.add_argument("--minutes", type=float, default=5.0)
            p.add_argument("--repeat", type=int, default=3)
        elif topic == "shards":
            p.add_argument("--segments", type=int, default=1000)
            p.add_argument("--source", choices=("runner", "exporter"), default="runner",
                           help="where the processed segments come from")
            p.add_argument("--repeat", type=int, default=3)
        elif topic == "dagster":
            p.add_argument("--repeat", type=int, default=3, help="runs of each from the raw audio")
            p.add_argument("--repeat-resumed", type=int, default=3, help="runs of each on the finished batch")
            p.add_argument("--episodes", type=int, default=len(SAMPLE_STEMS), choices=range(1, 5))
        else:
            p.add_argument("--objects", type=int, nargs="+", default=[10_000, 100_000])
            p.add_argument("--threads", type=int, default=16, help="threads putting objects (--populate http)")
            p.add_argument("--populate", choices=("backend", "http"), default="backend")
            p.add_argument("--steady-ticks", type=int, default=0,
                           help="stop the steady sweep after this many ticks (0: the whole sweep)")
    args = parser.parse_args(argv)
    if args.topic == "smoke":
        for topic in BENCHES:
            main([topic, "--smoke", "--out", str(args.out_dir / f"cpu_side_{topic}.json")])
        return
    if args.smoke:
        for k, v in SMOKE[args.topic].items():
            setattr(args, k, v)
    host = machine()
    t0 = time.perf_counter()
    report = BENCHES[args.topic](args)
    report = {"topic": args.topic, "command": " ".join(["benchmarks/cpu_side.py", *(argv or sys.argv[1:])]),
              "smoke": args.smoke, "machine": host, "wall_s": round(time.perf_counter() - t0, 1), **report}
    for row in report.get("rows", []):
        print(json.dumps(row))
    write_report(args.out or OUT_DIR / f"cpu_side_{args.topic}.json", report)


if __name__ == "__main__":
    main()
