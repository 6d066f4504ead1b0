"""dataset_report: every processed batch added up, with tables and plots, for the operator's eye in the UI.

A thin wrapper over `emilia_publish.dataset_report.build_dataset_report` (one small summary per batch, never the
segment catalogues of summarised batches; see that module). The PNGs go to the store (`reports/dataset/`); the UI
cannot reach the store, so the metadata carries them too, inline in markdown. `dataset_report_sensor` materializes
it after new batches (at most once per `DATASET_REPORT_INTERVAL_S`); a UI "Materialize" works any time.
"""

import dagster as dg

from emilia_publish.dataset_report import DatasetReport, build_dataset_report, markdown
from resources.object_store import ObjectStoreResource


def _metadata(result: DatasetReport) -> dict[str, dg.MetadataValue]:
    report = result.report
    t = report["totals"]
    meta: dict[str, dg.MetadataValue] = {
        "batches": dg.MetadataValue.int(report["batches"]),
        "episodes": dg.MetadataValue.int(t["episodes"]),
        "failed": dg.MetadataValue.int(t["failed"]),
        "segments": dg.MetadataValue.int(t["segments"]),
        "speakers": dg.MetadataValue.int(t["speakers"]),
        "hours_in": dg.MetadataValue.float(float(t["hours_in"])),
        "hours_out": dg.MetadataValue.float(float(t["hours_out"])),
        "languages": dg.MetadataValue.int(len(report["languages"])),
        "report": dg.MetadataValue.md(markdown(report, image_links=False)),
        "plots": dg.MetadataValue.md(result.inline_markdown() or "no plots"),
        "failures_by_reason": dg.MetadataValue.json(report["failures"]),
        "report_json": dg.MetadataValue.path(result.keys["report.json"]),
        "report_md": dg.MetadataValue.path(result.keys["report.md"]),
    }
    for name in result.pngs:
        meta[f"png_{name}"] = dg.MetadataValue.path(result.keys[name])
    for metric, d in report["dnsmos"].items():
        if d:
            meta[f"dnsmos_{metric}_p50"] = dg.MetadataValue.float(float(d["p50"]))
    return meta


@dg.asset(
    deps=[dg.AssetKey("processed_segments")],  # in the emilia_gpu location
    group_name="report",
    kinds={"python", "json"},
    description="All processed batches added up: hours, segments, speakers per language, DNSMOS, failures by "
    "reason, stage seconds; tables and plots (reports/dataset/*.png, shown inline in the metadata).",
)
def dataset_report(context: dg.AssetExecutionContext, store: ObjectStoreResource) -> dg.MaterializeResult:
    result = build_dataset_report(store.open(), store.processed_prefix)
    context.log.info(f"dataset report over {result.report['batches']} batches written to "
                     f"{', '.join(sorted(result.keys.values()))}")
    return dg.MaterializeResult(metadata=_metadata(result))
