"""The dataset report: every processed batch added up, as tables and PNG plots in the store (no Dagster).

It reads one small document per batch, the summary the runner writes when a batch ends
(`processed/_batches/<batch>.summary.json`, `emilia_pipe.batch_report`), and the release summary
(`release/summary.json`, one read) for what is published; never a segment catalogue of a summarised batch. A batch
without a summary (still running, its run lost, or processed before summaries) is summarised in memory from its
status table and catalogue, without stage seconds, and listed as such; nothing is written for it (the runner owns
that file). Reads: one listing of `processed/_batches/`, one small GET per batch (16 at a time).

Written under `reports/dataset/`: `report.json` (the figures), `report.md` (the tables, linking the PNGs) and the
plots: `hours_by_language.png`, `hours_by_batch.png`, `dnsmos.png`, `failures.png`. matplotlib is imported when the
plots are drawn, never at import.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from emilia_pipe import batch_report
from emilia_pipe.keys import join
from emilia_publish.summary import add, describe, histogram_values
from emilia_publish.summary import loads as load_release_summary
from emilia_store import ObjectStore, iter_objects
from emilia_store.layout import RELEASE_SUMMARY_KEY, dataset_report_key

FORMAT = 1
PLOTS = ("hours_by_language", "hours_by_batch", "dnsmos", "failures")
MD_BATCH_ROWS = 50  # the markdown lists the newest batches; report.json has them all
_QUANTILES = tuple(p / 100 for p in batch_report.PERCENTILES)


@dataclass
class DatasetReport:
    report: dict[str, Any]
    markdown: str  # tables, images linked by file name
    pngs: dict[str, bytes] = field(default_factory=dict)  # plot name -> PNG bytes
    keys: dict[str, str] = field(default_factory=dict)  # what was written: name -> store key

    def inline_markdown(self) -> str:
        """The plots as inline images (base64 PNG), for a UI that cannot reach the store."""
        parts = []
        for name, png in self.pngs.items():
            data = base64.b64encode(png).decode()
            parts.append(f"**{name.replace('_', ' ')}**\n\n![{name}](data:image/png;base64,{data})")
        return "\n\n".join(parts)


def batch_ids(store: ObjectStore, processed_prefix: str) -> tuple[list[str], set[str]]:
    """(batches with a status table, in id order; those with a summary), from one listing of `_batches/`."""
    batches: set[str] = set()
    summarised: set[str] = set()
    for obj in iter_objects(store, join(processed_prefix, "_batches") + "/"):
        name = obj.key.rsplit("/", 1)[-1]
        if name.endswith(".summary.json"):
            summarised.add(name[: -len(".summary.json")])
        elif name.endswith(".parquet") and not name.endswith(".segments.parquet"):
            batches.add(name[: -len(".parquet")])
    return sorted(batches), summarised & batches


def read_summaries(store: ObjectStore, processed_prefix: str, threads: int = 16) -> list[dict[str, Any]]:
    """Every batch's summary, in batch-id order (creation order); a batch without one is summarised from its tables
    and carries `"rebuilt": true`."""
    ids, summarised = batch_ids(store, processed_prefix)

    def one(batch_id: str) -> dict[str, Any]:
        doc = batch_report.read_summary(store, processed_prefix, batch_id) if batch_id in summarised else None
        if doc is None:
            doc = batch_report.summary_from_tables(store, processed_prefix, batch_id)
            doc["rebuilt"] = True
        return doc

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="emilia-report") as ex:
        return list(ex.map(one, ids))


def _release(store: ObjectStore) -> dict[str, Any] | None:
    try:
        data = store.get_bytes(RELEASE_SUMMARY_KEY)
    except KeyError:
        return None
    return load_release_summary(data, RELEASE_SUMMARY_KEY)["counts"]


def aggregate(summaries: Sequence[Mapping[str, Any]], release: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dataset's figures from the batches' summaries (sums; DNSMOS quantiles from the merged 0.01 histograms)."""
    totals = {k: 0 for k in ("episodes", "done", "resumed", "failed", "segments", "speakers")}
    totals.update(hours_in=0.0, hours_out=0.0)
    languages: dict[str, dict[str, Any]] = {}
    failures: dict[str, int] = {}
    hists: dict[str, dict[str, int]] = {m: {} for m in batch_report.DNSMOS_METRICS}
    stages: dict[str, float] = {}
    devices: dict[str, set[str]] = {}
    per_batch = []
    for s in summaries:
        for k in totals:
            totals[k] += s[k]
        for lang, e in s["languages"].items():
            into = languages.setdefault(lang, {"episodes": 0, "segments": 0, "hours": 0.0, "hours_in": 0.0,
                                               "speakers": 0})
            for k in into:
                into[k] += e.get(k, 0)
        add(failures, s["failures"])
        for m in hists:
            add(hists[m], s["dnsmos_hist"].get(m, {}))
        for stage, sec in (s.get("stage_seconds") or {}).items():
            stages[stage] = stages.get(stage, 0.0) + sec
            devices.setdefault(stage, set()).update(
                d.strip() for d in s.get("stage_devices", {}).get(stage, "").split(",") if d.strip())
        run = s.get("run") or {}
        per_batch.append({
            "batch_id": s["batch_id"], **{k: s[k] for k in ("episodes", "failed", "segments", "speakers")},
            "hours_in": s["hours_in"], "hours_out": s["hours_out"],
            "audio_hours_per_wall_hour": run.get("audio_hours_per_wall_hour"), "rebuilt": bool(s.get("rebuilt")),
        })
    dnsmos = {}
    for m, h in hists.items():
        d = describe(h, _QUANTILES)
        dnsmos[m] = None if d is None else {
            "n": d["n"], "mean": round(d["mean"], 4),
            **{f"p{p}": round(q, 4) for p, q in zip(batch_report.PERCENTILES, d["quantiles"], strict=True)}}
    published = {}
    for lang, e in ((release or {}).get("languages") or {}).items():
        published[lang] = {"segments": e.get("segments", 0), "hours": round(e.get("ms", 0) / 3_600_000, 6)}
    return {
        "format": FORMAT, "batches": len(summaries),
        "totals": {k: round(v, 6) if isinstance(v, float) else v for k, v in totals.items()},
        "languages": {k: {f: round(v, 6) if isinstance(v, float) else v for f, v in e.items()}
                      for k, e in sorted(languages.items())},
        "published": dict(sorted(published.items())),
        "failures": dict(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))),
        "dnsmos": dnsmos, "dnsmos_hist": hists,
        "stage_seconds": {k: round(v, 3) for k, v in sorted(stages.items(), key=batch_report.stage_rank)},
        "stage_devices": {k: ", ".join(sorted(v)) or "unknown" for k, v in sorted(devices.items())},
        "per_batch": per_batch,
    }


def markdown(report: Mapping[str, Any], image_links: bool = True) -> str:
    """The report's tables (and, with `image_links`, the PNGs by file name, as `report.md` beside them shows)."""
    t = report["totals"]
    lines = [
        f"## Dataset report: {report['batches']} batch{'' if report['batches'] == 1 else 'es'}", "",
        "| episodes | failed | hours in | hours out | segments | speakers |", "|---:|---:|---:|---:|---:|---:|",
        f"| {t['episodes']} | {t['failed']} | {t['hours_in']:.3f} | {t['hours_out']:.3f} | {t['segments']} "
        f"| {t['speakers']} |", "",
        "### Languages", "",
        "| language | episodes | segments | hours in | hours out | speakers | published segments | published hours |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    pub = report.get("published") or {}
    for lang, e in report["languages"].items():
        p = pub.get(lang, {})
        lines.append(f"| {lang} | {e['episodes']} | {e['segments']} | {e['hours_in']:.3f} | {e['hours']:.3f} "
                     f"| {e['speakers']} | {p.get('segments', 0)} | {p.get('hours', 0.0):.3f} |")
    lines += ["", "### DNSMOS (0.01 resolution)", "", "| metric | n | mean | p10 | p50 | p90 |",
              "|---|---:|---:|---:|---:|---:|"]
    for m in batch_report.DNSMOS_METRICS:
        d = report["dnsmos"].get(m)
        if d:
            lines.append(f"| {m.upper()} | {d['n']} | {d['mean']:.3f} | {d['p10']:.2f} | {d['p50']:.2f} "
                         f"| {d['p90']:.2f} |")
    lines += ["", "### Failures by reason", "", "| reason | episodes |", "|---|---:|"]
    lines += [f"| {r} | {n} |" for r, n in report["failures"].items()] or ["| none | 0 |"]
    if report["stage_seconds"]:
        lines += ["", "### Stage seconds (summed over episodes, on the device each stage ran on)", "",
                  "| stage | seconds | hours | ran on |", "|---|---:|---:|---|"]
        lines += [f"| {k} | {v:.1f} | {v / 3600:.3f} | {report['stage_devices'].get(k, 'unknown')} |"
                  for k, v in report["stage_seconds"].items()]
    rows = report["per_batch"][-MD_BATCH_ROWS:]
    more = len(report["per_batch"]) - len(rows)
    lines += ["", "### Batches" + (f" (the newest {len(rows)}; report.json lists all)" if more else ""), "",
              "| batch | episodes | failed | hours in | hours out | segments | speakers | audio h / wall h |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for b in rows:
        rate = b["audio_hours_per_wall_hour"]
        name = f"{b['batch_id']}{' (no summary)' if b['rebuilt'] else ''}"
        lines.append(f"| {name} | {b['episodes']} | {b['failed']} | {b['hours_in']:.3f} | {b['hours_out']:.3f} "
                     f"| {b['segments']} | {b['speakers']} | {'' if rate is None else f'{rate:.1f}'} |")
    if image_links:
        lines += ["", "### Plots", ""] + [f"![{name}]({name}.png)" for name in PLOTS]
    return "\n".join(lines)


def render_plots(report: Mapping[str, Any], dpi: int = 72) -> dict[str, bytes]:
    """The report's plots as small PNGs (name -> bytes). matplotlib is imported here (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    def figure() -> tuple[Any, Any]:
        fig = Figure(figsize=(6, 3.2), dpi=dpi)
        FigureCanvasAgg(fig)
        return fig, fig.subplots()

    def png(fig: Any) -> bytes:
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        return buf.getvalue()

    def empty(ax: Any, text: str) -> None:
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)

    out: dict[str, bytes] = {}
    langs = report["languages"]
    fig, ax = figure()
    names = list(langs)
    if names:
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [langs[n]["hours_in"] for n in names], 0.4, label="in (raw)")
        ax.bar([i + 0.2 for i in x], [langs[n]["hours"] for n in names], 0.4, label="out (segments)")
        ax.set_xticks(list(x), names)
        ax.legend(fontsize="small")
    else:
        empty(ax, "no segments yet")
    ax.set(title="Hours per language", ylabel="hours")
    out["hours_by_language"] = png(fig)

    fig, ax = figure()
    batches = report["per_batch"]
    if batches:
        cum_in, cum_out, a, b = [], [], 0.0, 0.0
        for r in batches:
            a, b = a + r["hours_in"], b + r["hours_out"]
            cum_in.append(a)
            cum_out.append(b)
        x = list(range(1, len(batches) + 1))
        ax.plot(x, cum_in, marker="." if len(x) < 50 else None, label="in (raw)")
        ax.plot(x, cum_out, marker="." if len(x) < 50 else None, label="out (segments)")
        ax.set(xlim=(0.5, len(x) + 0.5), ylim=(0, None))
        if len(x) <= 12:
            ax.set_xticks(x)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    else:
        empty(ax, "no batches yet")
    ax.set(title="Cumulative hours over batches", xlabel="batches (in creation order)", ylabel="hours")
    out["hours_by_batch"] = png(fig)

    fig, ax = figure()
    drawn = False
    for m, h in report["dnsmos_hist"].items():
        pairs = histogram_values(h)
        if pairs:
            drawn = True
            ax.hist([v for v, _ in pairs], bins=[1 + i * 0.1 for i in range(41)], weights=[c for _, c in pairs],
                    histtype="step", linewidth=1.5, label=m.upper())
    if drawn:
        ax.legend(fontsize="small")
    else:
        empty(ax, "DNSMOS not computed")
    ax.set(title="DNSMOS P.835 of the segments", xlabel="score", ylabel="segments", xlim=(1.0, 5.0))
    out["dnsmos"] = png(fig)

    fig, ax = figure()
    failures = report["failures"]
    if failures:
        reasons = list(failures)[:12][::-1]
        ax.barh([r[:40] for r in reasons], [failures[r] for r in reasons])
        ax.tick_params(axis="y", labelsize="small")
    else:
        empty(ax, "no failed episodes")
    ax.set(title="Failed episodes by reason", xlabel="episodes")
    out["failures"] = png(fig)
    return out


def build_dataset_report(store: ObjectStore, processed_prefix: str, plots: bool = True) -> DatasetReport:
    """Reads the batches' summaries and the release summary, writes `reports/dataset/` and returns what it wrote."""
    report = aggregate(read_summaries(store, processed_prefix), _release(store))
    result = DatasetReport(report, markdown(report))
    if plots:
        result.pngs = render_plots(report)
    for name, data in result.pngs.items():
        key = dataset_report_key(f"{name}.png")
        store.put_bytes(key, data)
        result.keys[name] = key
    for name, data in (("report.json", json.dumps(report, sort_keys=True, indent=1).encode()),
                       ("report.md", result.markdown.encode())):
        key = dataset_report_key(name)
        store.put_bytes(key, data)
        result.keys[name] = key
    return result
