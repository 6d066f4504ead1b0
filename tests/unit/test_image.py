"""The run image ships everything the code locations import: our packages (copied, installed, not docker-ignored)
and every third-party distribution they load (a declared dependency, or one of theirs)."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What a code server and a batch run import: every definitions module, and the runner's worker side.
PROBE = r"""
import importlib, json, sys
blocked = set(filter(None, sys.argv[1].split(",")))

class Block:  # a distribution the image does not install: importing it fails, as it would there
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is not installed in the image")

sys.meta_path.insert(0, Block())
for name in sys.argv[2:]:
    mod = importlib.import_module(name)
    if hasattr(mod, "defs"):
        mod.defs()
files = {}
for name, mod in list(sys.modules.items()):
    f = getattr(mod, "__file__", None)
    if f:
        files[name] = f
print(json.dumps(files))
"""


def imported_modules(blocked: set[str] = frozenset()) -> dict[str, str]:
    modules = ["emilia_assets.definitions", "emilia_pipe.pipeline", "emilia_pipe.pool", "emilia_pipe.runner",
               "emilia_pipe.cli", "emilia_pipe.doctor"]
    if (ROOT / "emilia_assets/gpu_definitions.py").exists():
        modules.append("emilia_assets.gpu_definitions")
    proc = subprocess.run([sys.executable, "-c", PROBE, ",".join(sorted(blocked)), *modules], cwd=ROOT,
                          capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


VENV = Path(sys.prefix).resolve()


def is_ours(file: str) -> bool:
    path = Path(file)
    if not path.is_absolute():  # a few modules carry a bare file name (torch.ops): not a location
        return False
    path = path.resolve()
    return path.is_relative_to(ROOT) and not path.is_relative_to(VENV)


def ours(files: dict[str, str]) -> set[str]:
    return {name.split(".")[0] for name, f in files.items() if is_ours(f)}


def docker_ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        regex = fnmatch.translate(pat).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        if any(re.fullmatch(regex, p) for p in prefixes) or (pat.startswith("**/") and any(
                fnmatch.fnmatch(p.rsplit("/", 1)[-1], pat[3:]) for p in prefixes)):
            ignored = not negate
    return ignored


def test_our_packages_are_copied_installed_and_not_ignored():
    files = imported_modules()
    packages = ours(files)
    assert {"emilia_assets", "emilia_pipe", "emilia_store", "resources", "sensors"} <= packages
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^COPY \. \.$", dockerfile, re.M), "the Dockerfile copies the project"
    for pkg in sorted(packages):
        assert any(fnmatch.fnmatch(pkg, pat) for pat in include), f"{pkg} is not installed by `pip install .`"
        for f in (ROOT / pkg).rglob("*.py"):
            rel = f.relative_to(ROOT).as_posix()
            assert not docker_ignored(rel, patterns), f"{rel} is excluded by .dockerignore"
    assert docker_ignored(".venv/bin/python", patterns) and docker_ignored("models/tiny/models.json", patterns)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_closure(roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = [re.split(r"[\s<>=!\[;~]", r, maxsplit=1)[0] for r in roots]
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [re.split(r"[\s<>=!\[;~(]", r, maxsplit=1)[0] for r in reqs if "extra ==" not in r]
    return seen


def test_every_third_party_distribution_imported_is_a_dependency():
    files = imported_modules()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    closure = _requirement_closure(pyproject["dependencies"] + pyproject["optional-dependencies"]["gpu"])
    dists = metadata.packages_distributions()
    stdlib = sys.stdlib_module_names
    missing = {}
    for name, f in files.items():
        top = name.split(".")[0]
        if top in stdlib or top.startswith("_") or is_ours(f):
            continue
        for dist in dists.get(top, []):
            if _norm(dist) not in closure:
                missing[top] = dist
    assert len({n.split(".")[0] for n in files} - stdlib) > 50  # the probe saw the third-party stack
    # What is imported here but not declared must be an optional import of a dependency (torch tries dill, yt-dlp
    # tries websockets): the code locations must load, and a batch run start, without it, as in the image.
    without = imported_modules(blocked=set(missing))
    assert not set(missing) & {n.split(".")[0] for n in without}
