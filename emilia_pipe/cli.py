"""`emilia-forge` / `python -m emilia_pipe`: the pipe without Dagster, through the same batch runner.

    emilia-forge process FILE... --out DIR [--root DIR] [--language en]
    emilia-forge run-batch BATCH_ID [--store DIR]
    emilia-forge reprocess KEY... [--store DIR]
    emilia-forge doctor [--load]

`process` writes `DIR/<language>/<episode_id>/` (MP3s + all_segments.json), the layout of `processed/`, plus the
completion markers and the status table (`DIR/_episodes/`, `DIR/_batches/`). A file's key is its path relative to
`--root` (default: the files' closest common folder), so
`emilia-forge process data/raw_audio/en/show/ep1.mp3 --root data` gives the episode the same id, and the same
result, as the batch that picks it up from a store rooted at `data`.
`run-batch` runs one batch manifest of a store (a local folder, or the S3/R2 bucket of the R2_* variables) exactly as
the Dagster asset does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def _pool_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default $EMILIA_DEVICE or auto)")
    p.add_argument("--workers-per-gpu", type=int, default=None, help="default $WORKERS_PER_GPU or 1")
    p.add_argument("--max-gpus", type=int, default=None, help="default $MAX_GPUS or all")
    p.add_argument("--cpu-workers", type=int, default=None,
                   help="workers without a GPU (default $EMILIA_CPU_WORKERS or 1)")


def _plan(args: argparse.Namespace):
    from emilia_pipe.devices import plan_workers

    device = args.device or os.environ.get("EMILIA_DEVICE") or "auto"
    return plan_workers(
        device,
        args.workers_per_gpu or _env_int("WORKERS_PER_GPU", 1),
        args.max_gpus if args.max_gpus is not None else (_env_int("MAX_GPUS", 0) or None),
        args.cpu_workers or _env_int("EMILIA_CPU_WORKERS", 1),
    )


def _print_event(event) -> None:
    print(f"[{event.level}] {event.message}", file=sys.stderr, flush=True)


def _process(args: argparse.Namespace) -> int:
    from emilia_pipe.batching import Batch, manifest_frame, new_batch_id
    from emilia_pipe.runner import Episode, run_batch
    from emilia_store import LocalStore

    paths = [Path(f).resolve() for f in args.files]
    for file, path in zip(args.files, paths, strict=True):
        if not path.is_file():
            print(f"FAILED {file}: no such file", file=sys.stderr)
            return 2
    # Without --root, the files' closest common folder: distinct files keep distinct keys (and episode ids).
    root = Path(args.root).resolve() if args.root else Path(os.path.commonpath([p.parent for p in paths]))
    objects = []
    for file, path in zip(args.files, paths, strict=True):
        if root not in path.parents:
            print(f"FAILED {file}: outside --root {root} (its key is its path relative to the root)", file=sys.stderr)
            return 2
        # as a store rooted there lists it (size, time, ETag): the same episode id as a batch would give
        objects.append(LocalStore(root).head(path.relative_to(root).as_posix()))
    raw_prefix = os.environ.get("RAW_AUDIO_PREFIX") or "raw_audio/"
    batch = Batch(new_batch_id(objects, time.time()), objects)
    episodes = [Episode.from_row(r) for r in manifest_frame(batch, raw_prefix).iter_rows(named=True)]
    plan = _plan(args)
    out = LocalStore(args.out)
    outcome = run_batch(batch.batch_id, episodes, LocalStore(root), out, "", pipe_config(args.models, args.language,
                        args.stages, plan.device), plan, Path(tempfile.mkdtemp(prefix="emilia-cli-")),
                        on_event=_print_event)
    for row, obj in zip(outcome.status.iter_rows(named=True), objects, strict=True):
        file = str(root / obj.key)
        if row["status"] == "failed":
            print(f"FAILED {file}: {row['error'].split(': ', 1)[-1]}", file=sys.stderr)
            continue
        print(json.dumps({"file": file, "episode_id": row["episode_id"],
                          "dir": str(out.path(f"{row['language']}/{row['episode_id']}")), "status": row["status"],
                          "segments": row["segments"], "duration_s": row["duration_s"]}))
    return 1 if outcome.count("failed") else 0


def _run_batch(args: argparse.Namespace) -> int:
    from emilia_pipe.batching import read_manifest
    from emilia_pipe.runner import Episode, Probe, run_batch
    from emilia_pipe.workdir import batch_dir
    from emilia_store import LocalStore, read_parquet
    from emilia_store.env import store_from_env
    from emilia_store.layout import probes_key

    store = LocalStore(args.store) if args.store else store_from_env()
    processed_prefix = os.environ.get("PROCESSED_PREFIX") or "processed/"
    episodes = [Episode.from_row(r) for r in read_manifest(store, args.batch_id).iter_rows(named=True)]
    try:
        probes = {r["episode_id"]: Probe(r["ok"], r["reason"], r["duration_s"])
                  for r in read_parquet(store, probes_key(args.batch_id)).iter_rows(named=True)}
    except KeyError:
        probes = {}
    plan = _plan(args)
    outcome = run_batch(args.batch_id, episodes, store, store, processed_prefix,
                        pipe_config(args.models, args.language, args.stages, plan.device), plan,
                        batch_dir(args.batch_id), probes=probes, on_event=_print_event)
    summary = {"batch_id": args.batch_id, "episodes": outcome.status.height, "done": outcome.count("done"),
               "resumed": outcome.count("resumed"), "failed": outcome.count("failed"),
               "segments": outcome.segments.height, "hours_in": round(outcome.hours_in, 4),
               "wall_s": round(outcome.wall_s, 1), "workers": plan.describe()}
    print(json.dumps(summary))
    return 1 if outcome.failed_fraction > args.max_failure_fraction else 0


def _reprocess(args: argparse.Namespace) -> int:
    from emilia_pipe.batching import request_reprocess
    from emilia_store import LocalStore
    from emilia_store.env import store_from_env

    store = LocalStore(args.store) if args.store else store_from_env()
    batch = request_reprocess(store, args.keys, os.environ.get("RAW_AUDIO_PREFIX") or "raw_audio/",
                              os.environ.get("PROCESSED_PREFIX") or "processed/")
    print(json.dumps({"batch_id": batch.batch_id, "keys": [o.key for o in batch.objects]}))
    return 0


def pipe_config(models_dir: str | None, language: str | None, stages: str | None, device: str | None = None):
    """The same settings the Dagster resource builds, from the CLI's flags and the environment."""
    from emilia_pipe.models import ModelSet
    from emilia_pipe.settings import ALL_STAGES, build_pipe_config

    models_dir = models_dir or os.environ.get("EMILIA_MODELS_DIR", "")
    return build_pipe_config(
        ModelSet.load(models_dir) if models_dir else ModelSet(),
        stages=[x for x in (stages.split(",") if stages is not None else ALL_STAGES) if x],
        device=device or os.environ.get("EMILIA_DEVICE") or "auto",
        asr_language=os.environ.get("ASR_LANGUAGE") if language is None else language,
        hf_token=os.environ.get("HF_TOKEN") or None,
    )


def _doctor(args: argparse.Namespace) -> int:
    from emilia_pipe.doctor import run_doctor
    from emilia_pipe.settings import ALL_STAGES

    stages = args.stages if args.stages is not None else os.environ.get("EMILIA_STAGES")
    report = run_doctor(
        args.models or os.environ.get("EMILIA_MODELS_DIR", ""),
        args.device or os.environ.get("EMILIA_DEVICE") or "auto",
        [x.strip() for x in stages.split(",") if x.strip()] if stages is not None else list(ALL_STAGES),
        load=args.load,
        hf_token=os.environ.get("HF_TOKEN") or None,
    )
    if args.json:
        print(json.dumps({"ok": report.ok, "checks": [c.__dict__ for c in report.checks], "facts": report.facts},
                         default=str))
    else:
        print(report.render())
    return 0 if report.ok else 1


def _models_fetch(args: argparse.Namespace) -> int:
    from emilia_pipe.models import fetch

    models = fetch(Path(args.dir), token=os.environ.get("HF_TOKEN") or None)
    print(json.dumps({"dir": args.dir, "kind": models.kind}))
    return 0


def _models_tiny(args: argparse.Namespace) -> int:
    from emilia_pipe.models import full_size, tiny

    if args.full_size:
        models = full_size(Path(args.dir), Path(args.dnsmos) if args.dnsmos else None, init_device=args.init_device,
                           with_whisper=not args.no_whisper, tiktoken=Path(args.tiktoken) if args.tiktoken else None)
    else:
        models = tiny(Path(args.dir), Path(args.dnsmos) if args.dnsmos else None)
    print(json.dumps({"dir": args.dir, "kind": models.kind}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emilia-forge", description="The Emilia pipe, without Dagster.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("process", help="run the pipe on audio files")
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True, help="output directory (processed/ layout)")
    p.add_argument("--language", default=None, help="force the language (skips ASR language detection)")
    p.add_argument("--models", default=None, help="folder with models.json (default $EMILIA_MODELS_DIR)")
    p.add_argument("--stages", default=None, help="optional stages to run, comma-separated (default: all)")
    p.add_argument("--root", default=None, help="keys (and so episode ids) are paths relative to this folder "
                   "(default: the files' closest common folder)")
    _pool_args(p)
    p.set_defaults(func=_process)
    b = sub.add_parser("run-batch", help="process one batch manifest of a store, as the Dagster asset does")
    b.add_argument("batch_id")
    b.add_argument("--store", default=None, help="a local store folder (default: S3/R2 from R2_* variables, "
                   "else $EMILIA_LOCAL_STORE or ./data)")
    b.add_argument("--language", default=None, help="force the language (skips ASR language detection)")
    b.add_argument("--models", default=None, help="folder with models.json (default $EMILIA_MODELS_DIR)")
    b.add_argument("--stages", default=None, help="optional stages to run, comma-separated (default: all)")
    b.add_argument("--max-failure-fraction", type=float, default=0.5, help="exit 1 above this fraction failed")
    _pool_args(b)
    b.set_defaults(func=_run_batch)
    r = sub.add_parser("reprocess", help="process raw-audio objects again on purpose (new models, new rules): "
                       "a new batch whose segments replace theirs in the release")
    r.add_argument("keys", nargs="+", help="raw-audio keys, e.g. raw_audio/en/show/ep1.mp3")
    r.add_argument("--store", default=None, help="a local store folder (default: S3/R2 from R2_* variables, "
                   "else $EMILIA_LOCAL_STORE or ./data)")
    r.set_defaults(func=_reprocess)
    d = sub.add_parser("doctor", help="check that this machine can run the pipe as configured (GPU, models)")
    d.add_argument("--models", default=None, help="folder with models.json (default $EMILIA_MODELS_DIR)")
    d.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default $EMILIA_DEVICE or auto)")
    d.add_argument("--stages", default=None, help="optional stages, comma-separated (default $EMILIA_STAGES or all)")
    d.add_argument("--load", action="store_true", help="also load every model and read back where each runs")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=_doctor)
    m = sub.add_parser("models", help="cache the production models, or build tiny ones").add_subparsers(
        dest="models_command", required=True
    )
    f = m.add_parser("fetch", help="download every production model into DIR (needs network, HF_TOKEN)")
    f.add_argument("dir")
    f.set_defaults(func=_models_fetch)
    t = m.add_parser("tiny", help="write random-weight models in the production formats into DIR")
    t.add_argument("dir")
    t.add_argument("--dnsmos", default=None, help="folder with the real DNSMOS files to copy (else stand-ins; "
                   "required with --full-size)")
    t.add_argument("--full-size", action="store_true", help="production sizes instead (Whisper large-v3, an MDX-Net "
                   "of UVR-MDX-NET-Inst_HQ_3's shape, pyannote at step 0.1): for GPU timings, ~3.2 GB")
    t.add_argument("--init-device", default=None, help="where to draw the large Whisper's weights (e.g. cuda)")
    t.add_argument("--no-whisper", action="store_true", help="with --full-size: skip Whisper (ASR not measured)")
    t.add_argument("--tiktoken", default=None, help="Whisper's multilingual.tiktoken, for a machine without PyPI")
    t.set_defaults(func=_models_tiny)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
