"""`emilia-forge` / `python -m emilia_pipe`: the pipe without Dagster.

    emilia-forge process FILE... --out DIR [--language en]

writes `DIR/<language>/<episode_id>/` (MP3s + all_segments.json), the same layout as `processed/`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from emilia_pipe.audio import AudioError
from emilia_pipe.keys import episode_id_for_key


def _process(args: argparse.Namespace) -> int:
    from emilia_pipe.pipeline import EmiliaPipeline

    pipeline = EmiliaPipeline(pipe_config(args.models, args.language, args.stages))
    failures = 0
    for file in args.files:
        path = Path(file)
        eid = episode_id_for_key(str(path.resolve()))
        tmp = Path(args.out) / ".work" / eid
        shutil.rmtree(tmp, ignore_errors=True)  # never let a crashed earlier run's all_segments.json survive
        try:
            result = pipeline.process(path, eid, tmp, language_hint=args.language)
        except AudioError as err:
            print(f"FAILED {err}", file=sys.stderr)
            failures += 1
            continue
        final = Path(args.out) / result.language / eid
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            for old in final.iterdir():
                old.unlink()
            final.rmdir()
        tmp.rename(final)
        print(json.dumps({"file": str(path), "episode_id": eid, "dir": str(final), "segments": len(result.segments),
                          "duration_s": round(result.duration_s, 2)}))
    shutil.rmtree(Path(args.out) / ".work", ignore_errors=True)
    return 1 if failures else 0


def pipe_config(models_dir: str | None, language: str | None, stages: str | None):
    """The same settings the Dagster resource builds, from the CLI's flags and the environment."""
    from emilia_pipe.models import ModelSet
    from emilia_pipe.settings import ALL_STAGES, build_pipe_config

    models_dir = models_dir or os.environ.get("EMILIA_MODELS_DIR", "")
    return build_pipe_config(
        ModelSet.load(models_dir) if models_dir else ModelSet(),
        stages=[x for x in (stages.split(",") if stages is not None else ALL_STAGES) if x],
        asr_language=os.environ.get("ASR_LANGUAGE") if language is None else language,
        hf_token=os.environ.get("HF_TOKEN") or None,
    )


def _models_fetch(args: argparse.Namespace) -> int:
    from emilia_pipe.models import fetch

    models = fetch(Path(args.dir), token=os.environ.get("HF_TOKEN") or None)
    print(json.dumps({"dir": args.dir, "kind": models.kind}))
    return 0


def _models_tiny(args: argparse.Namespace) -> int:
    from emilia_pipe.models import tiny

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
    p.set_defaults(func=_process)
    m = sub.add_parser("models", help="cache the production models, or build tiny ones").add_subparsers(
        dest="models_command", required=True
    )
    f = m.add_parser("fetch", help="download every production model into DIR (needs network, HF_TOKEN)")
    f.add_argument("dir")
    f.set_defaults(func=_models_fetch)
    t = m.add_parser("tiny", help="write random-weight models in the production formats into DIR")
    t.add_argument("dir")
    t.add_argument("--dnsmos", default=None, help="folder with the real DNSMOS files to copy (else stand-ins)")
    t.set_defaults(func=_models_tiny)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
