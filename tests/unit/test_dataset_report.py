"""The dataset report reads one small summary per batch (plus the release summary), never a segment catalogue."""

from __future__ import annotations

from emilia_pipe import batch_report
from emilia_publish.dataset_report import build_dataset_report
from tests.release_helpers import CountingStore, Ep, batch_id, fabricate_batch


class KeyCountingStore(CountingStore):
    """Also remembers which keys were read."""

    def reset(self) -> None:
        super().reset()
        self.keys: list[str] = []

    def get_bytes(self, key):
        self.keys.append(key)
        return super().get_bytes(key)


def _fabricate(store: KeyCountingStore, n: int) -> list[dict]:
    summaries = []
    for i in range(n):
        bid = batch_id(i + 1)
        eps = [Ep(f"raw_audio/{lang}/show/ep{i}-{lang}.mp3", language=lang, segments=2 + i % 3)
               for lang in ("en", "de")]
        bad = f"raw_audio/en/show/bad{i}.mp3"
        fabricate_batch(store, bid, [*eps, Ep(bad)], failed=(bad,))
        summary = batch_report.summary_from_tables(store, "processed/", bid)
        batch_report.write_summary(store, "processed/", summary)
        summaries.append(summary)
    return summaries


def test_reads_are_one_summary_per_batch_and_totals_are_their_sums(tmp_path):
    for n in (3, 12):
        store = KeyCountingStore(tmp_path / f"store{n}")
        summaries = _fabricate(store, n)
        store.reset()
        result = build_dataset_report(store, "processed/", plots=False)
        assert not any(k.endswith(".parquet") for k in store.keys), store.keys  # no status table, no catalogue
        assert sorted(store.keys) == sorted(
            [f"processed/_batches/{s['batch_id']}.summary.json" for s in summaries] + ["release/summary.json"])
        assert store.reads["list_page"] == 1
        totals = result.report["totals"]
        for key in ("episodes", "failed", "segments", "speakers"):
            assert totals[key] == sum(s[key] for s in summaries), key
        assert totals["hours_out"] == round(sum(s["hours_out"] for s in summaries), 6)
        for lang in ("en", "de"):
            assert result.report["languages"][lang]["segments"] == sum(s["languages"][lang]["segments"]
                                                                         for s in summaries)
        assert result.report["failures"] == {"broken": n}
        assert result.report["dnsmos"]["ovrl"]["n"] == totals["segments"]
