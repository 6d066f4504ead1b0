"""`emilia-forge backfill` without a webserver: choosing batches, chunks, what a failed-only re-run redoes, and the
errors a user sees. The whole path, against `dagster dev`, is tests/integration/test_cli_backfill.py."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest

from emilia_pipe.backfill import BackfillError, UnknownPartitions, backfill_link, chunks, select_partitions
from emilia_pipe.batching import Batch, manifest_frame
from emilia_pipe.catalogue import STATUS_SCHEMA
from emilia_pipe.cli import main
from emilia_pipe.redo import plan_redo
from emilia_store import LocalStore, ObjectInfo, write_parquet
from emilia_store.layout import batch_status_key, episode_done_key, probes_key

# the instance's order (dynamic partitions: the order they were added), deliberately not lexical
KEYS = ["b-3", "b-1", "b-4", "b-2"]


def test_a_range_follows_the_instance_order_inclusive_with_open_ends():
    assert select_partitions(KEYS, start="b-1", end="b-2") == ["b-1", "b-4", "b-2"]
    assert select_partitions(KEYS, start="b-4") == ["b-4", "b-2"]
    assert select_partitions(KEYS, end="b-1") == ["b-3", "b-1"]


def test_names_come_back_once_each_in_the_instance_order():
    assert select_partitions(KEYS, ["b-2", "b-3", "b-2"]) == ["b-3", "b-2"]


def test_unknown_names_are_one_error_naming_each():
    with pytest.raises(UnknownPartitions) as err:
        select_partitions(KEYS, ["b-1", "nope", "b-9"], asset="processed_segments", url="http://x")
    assert err.value.unknown == ["nope", "b-9"]
    assert "nope, b-9" in str(err.value) and "processed_segments" in str(err.value)
    with pytest.raises(UnknownPartitions, match="b-0"):
        select_partitions(KEYS, start="b-0")


@pytest.mark.parametrize("kwargs, message", [
    ({}, "choose batches"),
    ({"names": ["b-1"], "start": "b-1"}, "not both"),
    ({"start": "b-2", "end": "b-3"}, "comes after"),
])
def test_bad_selections_say_why(kwargs, message):
    with pytest.raises(BackfillError, match=message):
        select_partitions(KEYS, **kwargs)


def test_chunks_and_the_ui_link():
    assert chunks(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]
    with pytest.raises(BackfillError, match="at least 1"):
        chunks(["a"], 0)
    assert backfill_link("http://h:3000", "abc") == "http://h:3000/runs/b/abc?tab=runs"


def _batch(store: LocalStore, batch_id: str, stems: list[str]) -> list[str]:
    objects = [ObjectInfo(f"raw_audio/en/show/{s}.mp3", 100, 1.0, f"etag-{s}") for s in stems]
    frame = manifest_frame(Batch(batch_id, objects), "raw_audio/")
    write_parquet(store, f"manifests/batches/{batch_id}.parquet", frame)
    return frame["episode_id"].to_list()


def _status(store: LocalStore, batch_id: str, rows: list[tuple[str, str, str | None]]) -> None:
    frame = pl.DataFrame([{"episode_id": e, "audio_key": f"k/{e}", "status": s, "error": err}
                          for e, s, err in rows], schema=STATUS_SCHEMA)
    write_parquet(store, batch_status_key("processed/", batch_id), frame)


def test_plan_redo_says_what_the_runner_will_redo(tmp_path):
    store = LocalStore(tmp_path)
    done, failed, unreadable, unfinished, lost = _batch(store, "b1", ["done", "failed", "bad", "never", "lost"])
    store.put_bytes(episode_done_key("processed/", done), b"{}")
    _status(store, "b1", [(done, "done", None), (failed, "failed", "k: upload failed: OSError: disk full"),
                          (unreadable, "failed", "k: empty file"), (lost, "done", None)])
    write_parquet(store, probes_key("b1"), pl.DataFrame(
        [{"episode_id": e, "ok": e != unreadable, "reason": "empty file" if e == unreadable else None}
         for e in (done, failed, unreadable, unfinished, lost)]))
    plan = plan_redo(store, "processed/", "b1")
    assert plan.processed and plan.episodes == 5 and plan.complete == 1
    redo = {e.episode_id: e.reason for e in plan.redo}
    assert redo == {failed: "k: upload failed: OSError: disk full",
                    unfinished: "unfinished (no record: its run ended first)",
                    lost: "recorded done but its completion marker is missing"}
    assert [(e.episode_id, e.reason) for e in plan.unreadable] == [(unreadable, "empty file")]
    text = plan.describe()
    assert f"redo {failed} (raw_audio/en/show/failed.mp3): k: upload failed" in text
    assert f"not redone, unreadable input {unreadable}" in text


def test_plan_redo_of_a_clean_batch_and_of_one_never_processed(tmp_path):
    store = LocalStore(tmp_path)
    a, b = _batch(store, "clean", ["a", "b"])
    _status(store, "clean", [(a, "done", None), (b, "resumed", None)])
    plan = plan_redo(store, "processed/", "clean")
    assert (plan.redo, plan.unreadable, plan.complete) == ([], [], 2)
    _batch(store, "fresh", ["c"])
    fresh = plan_redo(store, "processed/", "fresh")
    assert not fresh.processed and "never processed" in fresh.describe()
    with pytest.raises(FileNotFoundError, match="manifests/batches/missing.parquet"):
        plan_redo(store, "processed/", "missing")


def test_the_cli_names_an_unreachable_webserver(capsys, monkeypatch):
    monkeypatch.delenv("DAGSTER_WEBSERVER_URL", raising=False)
    assert main(["backfill", "--url", "http://127.0.0.1:9", "b1"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Dagster webserver at http://127.0.0.1:9" in err and "DAGSTER_WEBSERVER_URL" in err


def test_failed_only_is_refused_for_another_asset(capsys):
    assert main(["backfill", "--url", "http://127.0.0.1:9", "--asset", "raw_episodes", "--failed-only", "b1"]) == 2
    assert "--failed-only re-runs episodes of processed_segments" in capsys.readouterr().err


def test_the_dagster_plus_token_is_sent_and_a_refusal_is_explained(capsys, monkeypatch):
    """A real HTTP server on 127.0.0.1 that refuses every request as Dagster+ does without a valid token."""
    seen: list[str | None] = []

    class Refuse(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            seen.append(self.headers.get("Dagster-Cloud-Api-Token"))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b"unauthorized")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        monkeypatch.delenv("DAGSTER_CLOUD_API_TOKEN", raising=False)
        assert main(["backfill", "--url", url, "b1"]) == 2
        assert "answered HTTP 401 (Dagster+ needs DAGSTER_CLOUD_API_TOKEN)" in capsys.readouterr().err
        monkeypatch.setenv("DAGSTER_CLOUD_API_TOKEN", "secret-token-value")
        assert main(["backfill", "--url", url, "b1"]) == 2
        err = capsys.readouterr().err
        assert "answered HTTP 401: unauthorized" in err and "secret-token-value" not in err
    finally:
        server.shutdown()
    assert seen == [None, "secret-token-value"]
