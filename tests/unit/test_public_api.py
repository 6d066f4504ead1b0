"""The code locations use Dagster's public API only: a private module (`dagster._core...`) can change in any patch
release, and the dagster family is pinned together precisely so that upgrades stay routine."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["emilia_assets", "sensors", "resources", "emilia_pipe", "emilia_store", "emilia_sources", "emilia_publish"]
# The demo drives a local daemon (starting sensors without one workspace load per sensor); it is a development tool
# that no code location imports.
DEV_TOOLS = {"emilia_assets/demo.py"}


def private_dagster_imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        out += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                if n.split(".")[0].startswith("dagster") and any(p.startswith("_") for p in n.split(".")[1:])]
    return out


def test_no_code_location_module_imports_private_dagster_modules():
    found = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if path.relative_to(ROOT).as_posix() not in DEV_TOOLS:
                found += private_dagster_imports(path)
    assert not found, found


def test_the_check_sees_a_private_import(tmp_path):
    bad = ROOT / "sensors" / "_probe_private_import_tmp.py"
    try:
        bad.write_text("from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG\n")
        assert private_dagster_imports(bad) == [
            "sensors/_probe_private_import_tmp.py:1 dagster._core.storage.tags"]
    finally:
        bad.unlink()
