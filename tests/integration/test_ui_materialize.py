"""The Dagster UI in a real browser: materialize one batch of processed_segments from the Materialize dialog.

`dagster dev -w workspace.yaml` runs on 127.0.0.1 in its own process session with its own DAGSTER_HOME and local
store (EMILIA_LOCAL_STORE). The store holds two sample episodes whose batch the raw-audio sensor has registered and
whose probe run (raw_episodes) has finished, as the sensor-driven chain leaves them. Debian's chromium, headless and
driven by playwright, then does what an operator does: opens `processed_segments` (emilia_gpu location), picks the
batch in the Materialize dialog and launches 1 run. The test waits for that run (giving up only when the instance
shows no progress, emilia_assets.run_progress), checks the batch's output in the store, and checks that the asset's
page shows the materialization's segment count and the result of its `segment_ids_unique` asset check.
The run does the pipe's cheap stages only (EMILIA_STAGES=""): this tests the UI path, not the models.

Screenshots: one PNG per step (01-asset.png, 02-materialize-dialog.png, ...) and, when a step fails, failure.png and
failure.html, next to dagster-dev.log (the server's output), in `test-artifacts/ui/` at the repo root or in
$EMILIA_UI_ARTIFACTS. Each run of the test replaces them.

Needs Debian's chromium (`make test` installs it through apt; playwright downloads no browser). Where chromium or
playwright is absent the test is skipped with the reason; under EMILIA_REQUIRE_BROWSER=1, which CI sets (.ci/run),
it fails instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from contextlib import suppress
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from emilia_assets.assets.ingest import raw_episodes
from emilia_assets.run_progress import wait_until as wait_for_runs
from resources.object_store import ObjectStoreResource
from tests.integration.dagster_dev import dagster_dev
from tests.integration.helpers import batch_from_sensor, materialize_batch, seed_samples

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ARTIFACTS = Path(os.environ.get("EMILIA_UI_ARTIFACTS") or ROOT / "test-artifacts" / "ui")
REQUIRE_ENV = "EMILIA_REQUIRE_BROWSER"
CHECK = "segment_ids_unique"  # the asset check on processed_segments whose result the asset page must show
NO_PROGRESS_S = 120.0  # start-up and the run: give up after this long without progress, never on a total
UI_TIMEOUT_MS = 60_000  # one element to appear; the UI answers within seconds, but CI's 2 cores are busy

def system_chromium() -> str:
    """The system chromium's path, or a skip (a failure under EMILIA_REQUIRE_BROWSER=1) naming what is missing."""
    missing = []
    path = shutil.which("chromium")
    if path is None:
        missing.append("Debian's chromium (`apt-get install chromium`; `make test` installs it)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("the playwright package (`pip install -e '.[dev]'`)")
    if missing:
        reason = f"the browser test needs {' and '.join(missing)}"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return path


class Screenshots:
    """PNGs of the page, numbered in the order taken."""

    def __init__(self, page, folder: Path):
        self.page, self.folder, self.n = page, folder, 0

    def take(self, name: str) -> None:
        self.n += 1
        self.page.screenshot(path=str(self.folder / f"{self.n:02d}-{name}.png"), full_page=True)


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in (*ARTIFACTS.glob("*.png"), *ARTIFACTS.glob("*.html"), *ARTIFACTS.glob("*.log")):
        old.unlink()
    return ARTIFACTS


def test_materialize_a_batch_from_the_ui_and_see_its_metadata_and_check(tmp_path, artifacts):
    chromium = system_chromium()
    from playwright.sync_api import expect, sync_playwright

    store_root, home = tmp_path / "store", tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(ROOT / "dagster_home/dagster.yaml", home / "dagster.yaml")  # the instance of `make dev`
    seed_samples(store_root, ["monologue", "long_silence"])
    store = ObjectStoreResource(local_root=str(store_root))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (batch,) = batch_from_sensor(instance, store)  # the manifest and the partition, as a sensor tick makes them
        # and its probe run, as the sensor's run request makes it (else the UI asks to confirm a missing upstream)
        assert materialize_batch(instance, store, batch, selection=[raw_episodes]).success

    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "DAGSTER_", "EMILIA_", "HF_"))}
    env.update(DAGSTER_HOME=str(home), EMILIA_LOCAL_STORE=str(store_root), EMILIA_WORK_DIR=str(tmp_path / "work"),
               EMILIA_STAGES="", PYANNOTE_METRICS_ENABLED="false", PYTHONPATH=str(ROOT))
    with dagster_dev(env, artifacts / "dagster-dev.log") as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        # A fresh browser profile gets the "Join the Dagster community" modal a second after a page loads. Opening
        # over the Materialize dialog, its "Skip" closed that dialog too (seen once in CI), so the profile starts as
        # one that has dismissed it: the UI reads `communityNux` (JSON) from localStorage. The handler stays for a
        # UI version that moves the key.
        context.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
        shots = Screenshots(page, artifacts)
        try:
            page.goto(f"{server.url}/assets/processed_segments")
            materialize = page.get_by_role("button", name="Materialize…")
            expect(materialize).to_be_enabled()
            shots.take("asset")
            materialize.click()
            dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
            expect(dialog).to_be_visible()
            shots.take("materialize-dialog")
            dialog.get_by_text("Select a partition or create one").click()
            page.get_by_role("menuitem", name=re.compile(rf"^{re.escape(batch)}\b")).click()
            launch = dialog.get_by_role("button", name="Launch 1 run")
            expect(launch).to_be_enabled()
            shots.take("partition-chosen")
            launch.click()
            # the launch is done once the dialog has closed and the toast names the run (leaving earlier cancels it)
            expect(dialog).to_be_hidden()
            toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
            expect(toast).to_be_visible()
            run_prefix = re.search(r"Launched run ([0-9a-f]{8})", toast.inner_text()).group(1)
            shots.take("launched")

            with dg.DagsterInstance.from_config(str(home)) as instance:
                finished = wait_for_runs(
                    instance, jobs=["__ASSET_JOB"], no_progress_s=NO_PROGRESS_S, check=server.check_alive,
                    done=lambda runs: any(r.run_id.startswith(run_prefix) for r in runs),
                    expected=lambda _: f"run {run_prefix}, launched from the UI, to finish",
                    log=lambda line: print(line, flush=True),
                )
            (run,) = [r for r in finished if r.run_id.startswith(run_prefix)]
            assert run.status == dg.DagsterRunStatus.SUCCESS, f"run {run.run_id}: {run.status.value}"
            assert run.tags["dagster/partition"] == batch
            assert run.remote_job_origin.location_name == "emilia_gpu"
            assert dg.AssetKey("processed_segments") in run.asset_selection

            # the batch's output: every episode's segments, as all_segments.json and one MP3 each
            segments = 0
            for episode_id in pl.read_parquet(store_root / "manifests/batches" / f"{batch}.parquet")["episode_id"]:
                folder = store_root / "processed/en" / episode_id
                doc = json.loads((folder / "all_segments.json").read_text())
                names = sorted(s["wav"] for s in doc["segments"])
                assert names, f"episode {episode_id}: no segments"
                assert names == sorted(p.name for p in folder.glob("*.mp3"))
                segments += len(names)

            # the asset's page: the latest materialization is this batch's, with its segment count...
            page.goto(f"{server.url}/assets/processed_segments")
            expect(page.get_by_role("link", name=batch, exact=True)).to_be_visible()
            row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="segments", exact=True))
            expect(row.get_by_role("cell").last).to_have_text(str(segments))
            shots.take("metadata")
            # ...and the result of the segment_ids_unique check, among the asset's checks
            page.get_by_role("tab", name="Checks").click()
            search, none = page.get_by_role("textbox", name="Filter checks"), page.get_by_text("No checks defined")
            expect(search.or_(none)).to_be_visible()
            if none.is_visible():
                pytest.fail(f"processed_segments has no asset checks: the UI cannot show {CHECK}'s result")
            search.fill(CHECK)
            listed = page.locator("span").filter(has=page.get_by_title(CHECK, exact=True))
            expect(listed, f"{CHECK}'s latest result in the Checks tab's list").to_contain_text("Succeeded")
            listed.click()
            expect(page.get_by_text("Evaluation result")).to_be_visible()
            expect(page.get_by_text("Passed", exact=True)).to_be_visible()
            shots.take("check")
        except BaseException:
            with suppress(Exception):  # the page as the failure left it; never hides the failure itself
                page.screenshot(path=str(artifacts / "failure.png"), full_page=True)
                (artifacts / "failure.html").write_text(page.content())
            raise
        finally:
            browser.close()
