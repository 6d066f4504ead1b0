"""`emilia-forge` / `python -m emilia_pipe`: the pipe without Dagster.

    emilia-forge process FILE... --out DIR [--language en]

writes `DIR/<language>/<episode_id>/` (MP3s + all_segments.json), the same layout as `processed/`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from emilia_pipe.audio import AudioError
from emilia_pipe.keys import episode_id_for_key


def _process(args: argparse.Namespace) -> int:
    from emilia_pipe.pipeline import EmiliaPipeline

    pipeline = EmiliaPipeline()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emilia-forge", description="The Emilia pipe, without Dagster.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("process", help="run the pipe on audio files")
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True, help="output directory (processed/ layout)")
    p.add_argument("--language", default=None, help="language of the files, until ASR detects it")
    p.set_defaults(func=_process)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
