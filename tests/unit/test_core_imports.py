"""The processing, ingest, publishing and store cores run without Dagster (the CLI, other orchestrators, notebooks).

Each module of each core package is imported in a fresh interpreter in which `dagster` (and every `dagster_*`
library) cannot be imported at all, so a stray import anywhere in the chain fails here.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORES = ["emilia_store", "emilia_pipe", "emilia_sources", "emilia_publish"]
# Dagster-free modules inside the Dagster packages: the courtesy sensor's decision and its Kubernetes reads.
CORE_MODULES = ["sensors.courtesy_core", "sensors.k8s_pods"]

BLOCK_DAGSTER = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    class NoDagster:
        def find_spec(self, name, path=None, target=None):
            if name == "dagster" or name.startswith(("dagster.", "dagster_")):
                raise ImportError(f"dagster is blocked in this test: {name}")
            return None

    sys.meta_path.insert(0, NoDagster())
    pkg = importlib.import_module(sys.argv[1])
    below = pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".") if hasattr(pkg, "__path__") else []
    names = [pkg.__name__] + [m.name for m in below if not m.name.endswith(".__main__")]
    for name in names:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m == "dagster" or m.startswith(("dagster.", "dagster_")))
    assert not leaked, leaked
    print(len(names))
    """
)


@pytest.mark.parametrize("package", CORES)
def test_core_package_imports_without_dagster(package: str) -> None:
    proc = subprocess.run([sys.executable, "-c", BLOCK_DAGSTER, package], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) >= 2  # the package and at least one module in it were imported


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_without_dagster(module: str) -> None:
    proc = subprocess.run([sys.executable, "-c", BLOCK_DAGSTER, module], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_blocker_really_blocks_dagster() -> None:
    # Guards the guard: a module that does import dagster must fail under the same blocker.
    for name in ("resources", "sensors.gpu_courtesy"):
        proc = subprocess.run([sys.executable, "-c", BLOCK_DAGSTER, name], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode != 0 and "dagster is blocked" in proc.stderr
