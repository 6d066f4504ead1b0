"""`emilia-forge` / `python -m emilia_pipe`: the pipe without Dagster, through the same batch runner.

    emilia-forge process FILE... --out DIR [--root DIR] [--language en]
    emilia-forge run-batch BATCH_ID [--store DIR]
    emilia-forge reprocess KEY... [--store DIR]
    emilia-forge doctor [--load]
    emilia-forge backfill (BATCH... | --partitions a,b | --from B1 --to B2) [--failed-only] [--url URL]

`process` writes `DIR/<language>/<episode_id>/` (MP3s + all_segments.json), the layout of `processed/`, plus the
completion markers and the status table (`DIR/_episodes/`, `DIR/_batches/`). A file's key is its path relative to
`--root` (default: the files' closest common folder), so
`emilia-forge process data/raw_audio/en/show/ep1.mp3 --root data` gives the episode the same id, and the same
result, as the batch that picks it up from a store rooted at `data`.
`run-batch` runs one batch manifest of a store (a local folder, or the S3/R2 bucket of the R2_* variables) exactly as
the Dagster asset does, its checks included: a failed blocking check exits 1, as too many failed episodes do.
`backfill` is the one command that talks to Dagster: an asset backfill of batches through a running webserver's
GraphQL API (`emilia_pipe.backfill`), so the runs go through the backfill daemon, the run queue, the pools and the
run launcher; `--failed-only` keeps the batches with episodes to redo (`emilia_pipe.redo`) and says which.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from emilia_pipe.settings import SettingError, env_number


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
        args.workers_per_gpu or env_number("WORKERS_PER_GPU", 1),
        args.max_gpus if args.max_gpus is not None else env_number("MAX_GPUS", None, minimum=0) or None,
        args.cpu_workers or env_number("EMILIA_CPU_WORKERS", 1),
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
    from emilia_pipe.batch_checks import BLOCKING_BATCH_CHECKS, check_batch, read_batch_files
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
    config = pipe_config(args.models, args.language, args.stages, plan.device)
    outcome = run_batch(args.batch_id, episodes, store, store, processed_prefix, config, plan,
                        batch_dir(args.batch_id), probes=probes, on_event=_print_event)
    # The batch's checks, as processed_segments evaluates them: a failed blocking one fails the command too.
    checks = check_batch(read_batch_files(store, processed_prefix, args.batch_id), config.rules,
                         args.max_failure_fraction)
    for check in checks:
        if not check.passed:
            print(f"check {check.name} failed"
                  f"{'' if check.name in BLOCKING_BATCH_CHECKS else ' (a warning)'}: {check.description}",
                  file=sys.stderr)
    blocked = [c.name for c in checks if not c.passed and c.name in BLOCKING_BATCH_CHECKS]
    summary = {"batch_id": args.batch_id, "episodes": outcome.status.height, "done": outcome.count("done"),
               "resumed": outcome.count("resumed"), "failed": outcome.count("failed"),
               "segments": outcome.segments.height, "hours_in": round(outcome.hours_in, 4),
               "wall_s": round(outcome.wall_s, 1), "workers": plan.describe(),
               "checks": {c.name: c.passed for c in checks}}
    print(json.dumps(summary))
    return 1 if outcome.failed_fraction > args.max_failure_fraction or blocked else 0


def _reprocess(args: argparse.Namespace) -> int:
    from emilia_pipe.batching import request_reprocess
    from emilia_store import LocalStore
    from emilia_store.env import store_from_env

    store = LocalStore(args.store) if args.store else store_from_env()
    batch = request_reprocess(store, args.keys, os.environ.get("RAW_AUDIO_PREFIX") or "raw_audio/",
                              os.environ.get("PROCESSED_PREFIX") or "processed/")
    print(json.dumps({"batch_id": batch.batch_id, "keys": [o.key for o in batch.objects]}))
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from emilia_pipe.backfill import (
        DEFAULT_CHUNK_SIZE,
        BackfillError,
        DagsterWebserver,
        backfill_link,
        chunks,
        select_partitions,
    )

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    names = [*args.batches, *[x.strip() for x in (args.partitions or "").split(",") if x.strip()]]
    web = DagsterWebserver(args.url)
    try:
        if args.failed_only and args.asset != "processed_segments":
            raise BackfillError("--failed-only re-runs episodes of processed_segments; leave --asset at its default")
        asset = web.asset(args.asset)
        if not asset.partitioned:
            raise BackfillError(f"asset {args.asset} is not partitioned: materialize it from the UI instead")
        batches = select_partitions(web.partition_keys(args.asset), names, args.start, args.end,
                                    asset=args.asset, url=web.url)
        tags = {"emilia/launched-by": "emilia-forge backfill"}
        busy = {b: runs for b, runs in web.runs_in_progress(args.asset).items() if b in set(batches)}
        for batch, runs in busy.items():
            say(f"{batch}: a run of {args.asset} is in progress ({', '.join(runs)}): "
                + ("left out, its record is complete once it ends" if args.failed_only else "this adds another"))
        if args.failed_only:
            batches = _batches_to_redo(args, [b for b in batches if b not in busy], say)
            tags["emilia/rerun"] = "failed-episodes"
            if not batches:
                say("nothing to redo in the chosen batches")
                return 0
        parts = chunks(batches, DEFAULT_CHUNK_SIZE if args.chunk_size is None else args.chunk_size)
        say(f"{args.asset} (location {asset.location}, backfill policy: {asset.backfill_policy}, pools: "
            f"{', '.join(asset.pools) or 'none'}): {len(batches)} batch(es) in {len(parts)} backfill(s)")
        if args.dry_run:
            for part in parts:
                print(json.dumps({"asset": args.asset, "partitions": part}))
            return 0
        instance = web.instance()
        if not instance.queued:
            say("warning: this instance has no run queue (QueuedRunCoordinator): runs are launched at once, "
                "without pool limits waiting in a queue")
        if not instance.backfill_daemon_healthy:
            say("warning: no healthy dagster-daemon reports the backfill daemon: the backfill waits until one runs")
        for i, part in enumerate(parts, 1):
            title = (f"{'failed-only ' if args.failed_only else ''}{args.asset} {part[0]}..{part[-1]}"
                     + (f" ({i}/{len(parts)})" if len(parts) > 1 else ""))
            backfill_id = web.launch_backfill(args.asset, part, title, tags)
            link = backfill_link(web.url, backfill_id)
            say(f"backfill {backfill_id}: {len(part)} batch(es) {part[0]}..{part[-1]}: {link}")
            print(json.dumps({"backfill_id": backfill_id, "url": link, "asset": args.asset, "partitions": part}),
                  flush=True)
    except (BackfillError, FileNotFoundError) as err:
        say(f"emilia-forge backfill: {err}")
        return 2
    return 0


def _batches_to_redo(args: argparse.Namespace, batches: list[str], say: Callable[[str], None]) -> list[str]:
    """The chosen batches a re-run would redo episodes of, each reported with its episodes."""
    from concurrent.futures import ThreadPoolExecutor

    from emilia_pipe.redo import plan_redo
    from emilia_store import LocalStore
    from emilia_store.env import store_from_env

    store = LocalStore(args.store) if args.store else store_from_env()
    processed_prefix = os.environ.get("PROCESSED_PREFIX") or "processed/"
    with ThreadPoolExecutor(8, thread_name_prefix="emilia-redo-batch") as ex:
        plans = list(ex.map(lambda b: plan_redo(store, processed_prefix, b), batches))
    for plan in plans:
        if plan.redo or plan.unreadable or not plan.processed:
            say(plan.describe())
    chosen = [p.batch_id for p in plans if p.redo]
    say(f"failed-only: {sum(len(p.redo) for p in plans)} episode(s) to redo in {len(chosen)} of {len(plans)} "
        f"batch(es) ({store.describe()})")
    return chosen


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
    parser = argparse.ArgumentParser(prog="emilia-forge", description="The Emilia pipe without Dagster, and backfills "
                                     "of batches through a Dagster webserver.")
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
    k = sub.add_parser("backfill", help="process batches through Dagster's backfill daemon, run queue, pools and run "
                       "launcher (an asset backfill over the webserver's GraphQL API)")
    k.add_argument("batches", nargs="*", help="batch partitions (or --partitions, or --from/--to)")
    k.add_argument("--partitions", default=None, help="comma-separated batch partitions")
    k.add_argument("--from", dest="start", default=None, help="first batch of an inclusive range (instance order)")
    k.add_argument("--to", dest="end", default=None, help="last batch of the range (default: the newest)")
    k.add_argument("--failed-only", action="store_true", help="only the chosen batches with failed or unfinished "
                   "episodes; their re-runs redo just those (finished episodes are kept)")
    k.add_argument("--asset", default="processed_segments", help="the asset to backfill (default %(default)s)")
    k.add_argument("--url", default=None, help="the Dagster webserver (default $DAGSTER_WEBSERVER_URL or "
                   "http://127.0.0.1:3000); Dagster+ also reads $DAGSTER_CLOUD_API_TOKEN")
    k.add_argument("--chunk-size", type=int, default=None, help="batches per backfill (default 500)")
    k.add_argument("--store", default=None, help="with --failed-only: a local store folder (default: S3/R2 from "
                   "R2_* variables, else $EMILIA_LOCAL_STORE or ./data), the one the code locations use")
    k.add_argument("--dry-run", action="store_true", help="say what would be launched, launch nothing")
    k.set_defaults(func=_backfill)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SettingError as err:
        parser.exit(2, f"emilia-forge: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
