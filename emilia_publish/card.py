"""The dataset card (README.md with the YAML header the Hub reads) and its distribution figure, from the release
summary (emilia_publish.summary).

Everything in the card is computed from the summary, which the release writer updates with every batch it publishes,
so the card cannot drift from what was uploaded and never needs the whole index; the same summary renders
byte-identical text and PNG: a re-publish with nothing new changes no file on the Hub. `render_card` also takes a
sample index (a DataFrame), summarised on the spot.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
import yaml

from emilia_publish.filters import PublishFilters
from emilia_publish.summary import describe, histogram_values, is_test_release, merged, summary_from_index

FIGURE_PATH = "assets/distributions.png"
EMILIA_URL = "https://arxiv.org/abs/2407.05361"
TASK_CATEGORIES = ["text-to-speech", "automatic-speech-recognition"]
TAGS = ["audio", "speech", "emilia", "webdataset", "parquet", "podcasts"]
TEST_RELEASE_TAG = "test-release"
SAMPLING_RATE = 24_000
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)

# The fields of each sample's `<key>.json` (emilia_publish.release.sample_meta): name -> (datasets dtype,
# meaning). The card documents them and the `datasets` snippet declares them from here; the integration test
# checks the shards carry exactly these, so a field added to the sidecar must be added here too.
SAMPLE_FIELDS: dict[str, tuple[str, str]] = {
    "id": ("string", "Sample key, `<episode_id>_<n:06d>`: the stem of the tar members."),
    "wav": ("string", "Name of the audio member, `<id>.mp3` (MP3, 24 kHz mono), as Emilia's `wav`."),
    "text": ("string", "Whisper transcript (empty if ASR did not run)."),
    "duration": ("float64", "Segment length in seconds."),
    "speaker": ("string", "Diarization label, unique within the episode: `<episode_id>_S<nn>`."),
    "language": ("string", "ISO 639 code of the segment's language (Whisper's, or the source's when given)."),
    "dnsmos": ("float64", "DNSMOS P.835 OVRL, as Emilia's `dnsmos` (null if not computed)."),
    "start": ("float64", "Start of the segment in the episode, seconds."),
    "end": ("float64", "End of the segment in the episode, seconds."),
    "episode_id": ("string", "Episode the segment was cut from."),
    "source": ("string", "Source (feed or channel) of the episode."),
    "batch_id": ("string", "Processing batch that produced the sample (its shards are `<batch_id>-<n:05d>.tar`)."),
    "dnsmos_sig": ("float64", "DNSMOS P.835 SIG (speech quality)."),
    "dnsmos_bak": ("float64", "DNSMOS P.835 BAK (background noise)."),
    "dnsmos_ovrl": ("float64", "DNSMOS P.835 OVRL (same as `dnsmos`)."),
    "language_probability": ("float64", "Whisper's language probability (null when the language was given)."),
    "license": ("string", "Licence of the episode as its source states it (YouTube's licence, a feed's copyright)."),
    "model_set": ("string", "Id of the model set that made the sample (see *Provenance*)."),
    "code_version": ("string", "Version of the Emilia Forge code that made the sample."),
}

LANGUAGE_NAMES = {
    "en": "English", "zh": "Chinese", "de": "German", "fr": "French", "ja": "Japanese", "ko": "Korean",
    "es": "Spanish", "it": "Italian", "pt": "Portuguese", "ru": "Russian", "nl": "Dutch", "pl": "Polish",
    "und": "Undetermined",
}
# What the Hub's `language:` accepts; `und` and region-tagged codes still get a config, just not a language tag.
_ISO_CODE = re.compile(r"^[a-z]{2,3}$")
_SIZE_BUCKETS = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                 (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def size_category(n: int) -> str:
    """The Hub's `size_categories` bucket for `n` samples."""
    return next((label for bound, label in _SIZE_BUCKETS if n < bound), "n>1B")


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`1 language`, `2 languages`, `0 languages`: a count with its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _fmt(x: float | None, digits: int) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def as_summary(release: pl.DataFrame | Mapping[str, Any]) -> dict[str, Any]:
    """A release summary, from a summary or from a sample index (summarised on the spot)."""
    return summary_from_index(release) if isinstance(release, pl.DataFrame) else dict(release)


def _languages(summary: Mapping[str, Any]) -> list[str]:
    return sorted(summary["counts"].get("languages", {}))


def _by_language(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for lang in _languages(summary):
        c = summary["counts"]["languages"][lang]
        rows.append({"language": lang, "segments": c.get("segments", 0), "hours": c.get("ms", 0) / 3_600_000,
                     "speakers": c.get("speakers", 0), "episodes": c.get("episodes", 0),
                     "shards": c.get("shards", 0)})
    return rows


def hours_per_language(release: pl.DataFrame | Mapping[str, Any]) -> dict[str, float]:
    """Hours of audio per language code (null language as `und`): what the card's language table shows."""
    return {r["language"]: r["hours"] for r in _by_language(as_summary(release))}


def _total(summary: Mapping[str, Any], name: str) -> int:
    return int(summary["counts"].get("totals", {}).get(name, 0))


def configs(languages: list[str]) -> list[dict[str, Any]]:
    """The Hub configs: WebDataset (`default`, one per language) and the same samples as Parquet (`parquet`,
    `parquet-<language>`)."""
    out: list[dict[str, Any]] = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*/*.tar"}]}]
    out += [{"config_name": lang, "data_files": [{"split": "train", "path": f"data/{lang}/*.tar"}]}
            for lang in languages]
    out.append({"config_name": "parquet", "data_files": [{"split": "train", "path": "data/*/*.parquet"}]})
    out += [{"config_name": f"parquet-{lang}", "data_files": [{"split": "train", "path": f"data/{lang}/*.parquet"}]}
            for lang in languages]
    return out


def _header(summary: Mapping[str, Any], repo_id: str, license: str, pretty_name: str) -> str:
    languages = _languages(summary)
    meta = {
        "license": license,
        "language": [lang for lang in languages if _ISO_CODE.match(lang) and lang != "und"],
        "pretty_name": pretty_name,
        "task_categories": TASK_CATEGORIES,
        "size_categories": [size_category(_total(summary, "segments"))],
        "tags": TAGS + ([TEST_RELEASE_TAG] if is_test_release(summary) else []),
        "configs": configs(languages),
    }
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)


def _quantile_rows(summary: Mapping[str, Any], which: str, digits: int) -> list[str]:
    head = ["Language", "n", "mean", "min", *(f"p{round(q * 100)}" for q in QUANTILES), "max"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    langs = summary["counts"].get("languages", {})
    groups = [(f"`{lang}`", langs[lang].get(which, {})) for lang in _languages(summary)]
    groups.append(("**all**", merged(langs[lang].get(which, {}) for lang in langs)))
    for label, hist in groups:
        stats = describe(hist, QUANTILES)
        if stats is None:
            cells = ["0"] + ["–"] * (len(head) - 2)
        else:
            values = [stats["mean"], stats["min"], *stats["quantiles"], stats["max"]]
            cells = [str(stats["n"])] + [_fmt(float(v), digits) for v in values]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return lines


def _most_common(counter: Mapping[str, int]) -> str:
    return max(sorted(counter), key=lambda k: counter[k]) if counter else ""


def _sources_section(summary: Mapping[str, Any], sources: Sequence[dict[str, Any]] | None, license: str) -> list[str]:
    per_source = {
        name: {"segments": c.get("segments", 0), "hours": c.get("ms", 0) / 3_600_000,
               "licenses": c.get("licenses", {}), "url": _most_common(c.get("urls", {}))}
        for name, c in summary["counts"].get("sources", {}).items()
    }
    lines = [
        "## Sources and licences", "",
        f"The dataset is released under `{license}`, as Emilia. The audio remains subject to the terms of the "
        "sources it was taken from:", "",
    ]
    recorded = any(lic != "not recorded" for r in per_source.values() for lic in r["licenses"])
    if not sources and not recorded:
        lines += ["Source licences were not recorded for this release. Sources by name (the `source` field):", "",
                  "| Source | Segments | Hours |", "|---|---:|---:|"]
        lines += [f"| {name} | {r['segments']} | {r['hours']:.3f} |" for name, r in sorted(per_source.items())]
        return lines + [""]
    # (source, url, licence) -> segments, hours: what the sources list says, else what the ingest sidecars said
    rows: dict[tuple[str, str, str], dict[str, float]] = {}
    given = {str(s.get("name") or s.get("source_id") or ""): s for s in sources or []}
    for name, s in given.items():
        r = per_source.get(name, {"segments": 0, "hours": 0.0})
        rows[(name, str(s.get("url") or ""), str(s.get("license") or "not recorded"))] = {
            "segments": r["segments"], "hours": r["hours"]}
    for name, r in per_source.items():
        if name in given:
            continue
        for lic, c in r["licenses"].items():
            rows[(name, r["url"], lic)] = {"segments": c.get("segments", 0), "hours": c.get("ms", 0) / 3_600_000}
    lines += ["| Source | URL | Licence | Segments | Hours |", "|---|---|---|---:|---:|"]
    by_licence: dict[str, dict[str, float]] = {}
    for (name, url, lic), r in sorted(rows.items()):
        lines.append(f"| {name} | {f'<{url}>' if url else '–'} | {lic} | {int(r['segments'])} | {r['hours']:.3f} |")
        agg = by_licence.setdefault(lic, {"sources": 0, "segments": 0, "hours": 0.0})
        agg["sources"] += 1
        agg["segments"] += r["segments"]
        agg["hours"] += r["hours"]
    lines += ["", "By licence:", "", "| Licence | Sources | Segments | Hours |", "|---|---:|---:|---:|"]
    lines += [f"| {lic} | {int(a['sources'])} | {int(a['segments'])} | {a['hours']:.3f} |"
              for lic, a in sorted(by_licence.items())]
    return lines + [""]


def _model_line(field: str, m: Mapping[str, Any]) -> str:
    sha = f", sha256 `{m['sha256'][:16]}…`" if m.get("sha256") else ""
    rev = f" @ `{m['revision']}`" if m.get("revision") else ""
    return f"{field}: `{m.get('name')}`{rev}{sha}"


def _provenance_section(summary: Mapping[str, Any]) -> list[str]:
    counts = summary["counts"]
    docs = summary.get("model_docs", {})
    lines = ["## Provenance", "",
             "Every sample records the model set (`model_set`) and the code version (`code_version`) that made it; "
             "the index has them per sample, with the raw object (`audio_key`) and its version (`episode_version`) "
             "the sample was cut from.", "",
             "| Model set | Kind | Segments | Models (name @ revision, checksum) |", "|---|---|---:|---|"]
    for set_id, n in sorted(counts.get("model_sets", {}).items()):
        doc = docs.get(set_id, {})
        models = "<br>".join(_model_line(f, m) for f, m in sorted(doc.get("models", {}).items())) or "–"
        kind = doc.get("kind", "not recorded")
        lines.append(f"| `{set_id}` | {kind} | {n} | {models} |")
    lines += ["", "| Code version | Segments |", "|---|---:|"]
    lines += [f"| `{v}` | {n} |" for v, n in sorted(counts.get("code_versions", {}).items())]
    return lines + [""]


def _loading_section(repo_id: str, languages: list[str]) -> list[str]:
    lang = "en" if "en" in languages else (languages[0] if languages else "en")
    json_fields = "\n".join(f'        "{name}": Value("{dtype}"),' for name, (dtype, _) in SAMPLE_FIELDS.items())
    wds_snippet = f'''```python
import io, json

import soundfile as sf
import webdataset as wds
from huggingface_hub import HfApi, get_token, hf_hub_url

repo = "{repo_id}"
files = sorted(f for f in HfApi().list_repo_files(repo, repo_type="dataset")
               if f.startswith("data/{lang}/") and f.endswith(".tar"))
auth = f"-H 'Authorization:Bearer {{get_token()}}'" if get_token() else ""
urls = [f"pipe:curl -s -L {{auth}} {{hf_hub_url(repo, f, repo_type='dataset')}}" for f in files]
for sample in wds.WebDataset(urls, shardshuffle=False):
    meta = json.loads(sample["json"])
    audio, sr = sf.read(io.BytesIO(sample["mp3"]))  # 24 kHz mono
```'''
    ds_snippet = f'''```python
from datasets import load_dataset

ds = load_dataset("{repo_id}", "{lang}", split="train", streaming=True)  # "default": every language
```'''
    ds_cpu_snippet = f'''```python
import io

import soundfile as sf
from datasets import Features, Value, load_dataset

features = Features({{
    "mp3": Value("binary"),
    "json": {{
{json_fields}
    }},
    "__key__": Value("string"),
    "__url__": Value("string"),
}})
ds = load_dataset("{repo_id}", "{lang}", split="train", streaming=True, features=features)
for row in ds:
    audio, sr = sf.read(io.BytesIO(row["mp3"]))
```'''
    parquet_snippet = f'''```python
import io

import soundfile as sf
from datasets import Audio, load_dataset

ds = load_dataset("{repo_id}", "parquet-{lang}", split="train", streaming=True)  # "parquet": every language
ds = ds.cast_column("audio", Audio(decode=False))  # {{"bytes", "path"}}, without torchcodec
for row in ds:
    audio, sr = sf.read(io.BytesIO(row["audio"]["bytes"]))
```'''
    return [
        "## Loading", "",
        "Shards are plain WebDataset tars, so any tar reader works. With "
        "[webdataset](https://github.com/webdataset/webdataset):", "", wds_snippet, "",
        "With 🤗 `datasets` (one config per language, `default` for all):", "", ds_snippet, "",
        "`datasets` decodes `mp3` as `Audio`, which needs `torchcodec`. Without it, declare the features and "
        "decode with soundfile:", "", ds_cpu_snippet, "",
        "The same samples are also Parquet files beside the tars (`data/<language>/<shard>.parquet`, one per tar, "
        "row groups of 100 samples), with the audio as the `Audio` feature's `{bytes, path}` struct: the Hub's "
        "viewer plays them, and `datasets` reads them as configs `parquet` and `parquet-<language>`:", "",
        parquet_snippet, "",
    ]


def render_figure(release: pl.DataFrame | Mapping[str, Any]) -> bytes:
    """Histograms of DNSMOS OVRL and segment duration, one step line per language, as PNG bytes.

    Built on a bare `Figure` with the Agg canvas (no pyplot state, safe in a worker thread); fixed bins, sizes and
    no Software/date metadata keep the PNG byte-identical for the same summary. matplotlib is imported here, in the
    publish run, so that loading the code location does not pay for it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = as_summary(release)
    langs = summary["counts"].get("languages", {})
    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_mos, ax_dur = fig.subplots(1, 2)
    mos_bins = np.linspace(1.0, 5.0, 41)
    max_dur = max((v for lang in langs.values() for v, _ in histogram_values(lang.get("duration", {}))), default=0.0)
    dur_bins = np.arange(0.0, max(30.0, math.ceil(max_dur)) + 1.0, 1.0)
    any_mos = False
    for lang in _languages(summary):
        mos = histogram_values(langs[lang].get("dnsmos", {}))
        dur = histogram_values(langs[lang].get("duration", {}))
        if mos:
            any_mos = True
            n = sum(c for _, c in mos)
            ax_mos.hist([v for v, _ in mos], bins=mos_bins, weights=[c for _, c in mos], histtype="step",
                        linewidth=1.5, label=f"{lang} ({n})")
        if dur:
            n = sum(c for _, c in dur)
            ax_dur.hist([v for v, _ in dur], bins=dur_bins, weights=[c for _, c in dur], histtype="step",
                        linewidth=1.5, label=f"{lang} ({n})")
    if not any_mos:
        ax_mos.text(0.5, 0.5, "DNSMOS not computed", ha="center", va="center", transform=ax_mos.transAxes)
    ax_mos.set(title="DNSMOS P.835 OVRL", xlabel="OVRL", ylabel="segments", xlim=(1.0, 5.0))
    ax_dur.set(title="Segment duration", xlabel="seconds", ylabel="segments", xlim=(0.0, float(dur_bins[-1])))
    for ax in (ax_mos, ax_dur):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title="language (segments)", fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def render_card(
    release: pl.DataFrame | Mapping[str, Any],
    *,
    repo_id: str,
    license: str = "cc-by-nc-4.0",
    sources: list[dict] | None = None,
    pretty_name: str = "Emilia Forge",
    filters: PublishFilters | None = None,
    index_path: str | None = None,
) -> tuple[str, bytes]:
    """README.md text and the PNG it shows at `assets/distributions.png`, both from the release summary.

    `release` is a summary (emilia_publish.summary) or a sample index with the columns of
    `emilia_publish.index.INDEX_SCHEMA`. `sources`, when given, lists sources' `name` (as in the samples' `source`
    field), `url` and `license`, and wins over the licences the ingest sidecars recorded. `filters`, when given, are
    stated as the ones the release applied; `index_path`, when given, is where the index Parquet lives in the repo,
    for a polars snippet.
    """
    summary = as_summary(release)
    languages = _languages(summary)
    by_lang = _by_language(summary)
    segments = _total(summary, "segments")
    hours = _total(summary, "ms") / 3_600_000
    speakers, episodes = _total(summary, "speakers"), _total(summary, "episodes")
    n_sources = len(summary["counts"].get("sources", {}))
    lines = ["---", _header(summary, repo_id, license, pretty_name).rstrip("\n"), "---", "", f"# {pretty_name}", ""]
    if is_test_release(summary):
        tiny = summary["counts"]["model_kinds"]["tiny"]
        lines += [f"> **⚠️ TEST RELEASE.** {count(tiny, 'segment')} of this release were made by random-weight "
                  "models (`emilia-forge models tiny`): their text, speakers, languages and scores are meaningless. "
                  "It exists to test the pipeline; do not train on it.", ""]
    lines += [
        f"{pretty_name} is an in-the-wild speech dataset in the [Emilia]({EMILIA_URL}) format, for speech generation "
        "and recognition: podcast and video audio processed by the Emilia pipeline (standardisation, source "
        "separation, speaker diarization, VAD segmentation, Whisper ASR, DNSMOS) into single-speaker segments, "
        "packed as WebDataset shards of `<key>.mp3` + `<key>.json`, and the same samples as Parquet.", "",
        # Hours keep the plural: a decimal ("1.000 hours") reads plural in English.
        f"**{count(segments, 'segment')}, {hours:.3f} hours, {count(len(languages), 'language')}, "
        f"{count(speakers, 'speaker')}, {count(episodes, 'episode')}, {count(n_sources, 'source')}.**", "",
        "## Languages", "",
        "| Language | Name | Segments | Hours | Speakers | Episodes | Shards |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in by_lang:
        lines.append(f"| `{r['language']}` | {LANGUAGE_NAMES.get(r['language'], r['language'])} | {r['segments']} | "
                     f"{r['hours']:.3f} | {r['speakers']} | {r['episodes']} | {r['shards']} |")
    shards = sum(r["shards"] for r in by_lang)
    lines += [
        f"| **all** | | {segments} | {hours:.3f} | {speakers} | {episodes} | {shards} |", "",
        "Each language is a config (`data/<language>/*.tar`); `default` holds them all. The same samples as Parquet: "
        "`parquet-<language>` (`data/<language>/*.parquet`) and `parquet`.", "",
        "## Speakers", "",
        f"{count(speakers, 'speaker label')}. Labels come from diarization within one episode "
        "(`<episode_id>_S<nn>`): the same person in two episodes has two labels, so this counts speakers per "
        "episode, not people.", "",
        "## Quality and duration", "",
        "DNSMOS (P.835: `dnsmos_sig`, `dnsmos_bak`, `dnsmos_ovrl`; `dnsmos` is OVRL, as in Emilia) is recorded for "
        "every sample but never used to drop a sample unless the publish filters say so.",
    ]
    if filters is not None:
        described = filters.describe()
        if described:
            lines += ["", "This release's publish filters left out segments:", ""]
            lines += [f"- {d}" for d in described]
        else:
            lines += ["", "This release applied no publish filter: every segment the pipeline produced is here."]
    lines += ["", "Statistics are kept at a resolution of 0.01 (DNSMOS points, seconds).", "",
              "### DNSMOS OVRL", "", *_quantile_rows(summary, "dnsmos", 2), "",
              "### Segment duration (seconds)", "", *_quantile_rows(summary, "duration", 2), "",
              f"![DNSMOS OVRL and segment duration per language]({FIGURE_PATH})", ""]
    lines += ["## Sample format", "",
              "Every sample is two members of a tar shard: `<key>.mp3` (24 kHz mono MP3) and `<key>.json`:", "",
              "| Field | Type | Meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {dtype} | {meaning} |" for name, (dtype, meaning) in SAMPLE_FIELDS.items()]
    lines += ["", "In the Parquet files each sample is a row: `audio` (`{bytes, path}`, the MP3 and `<key>.mp3`) and "
              "the fields above as columns.", ""]
    lines += _loading_section(repo_id, languages)
    if index_path:
        lines += [
            f"`{index_path}` lists every sample (key, shard, language, duration, speaker, dnsmos, text, episode_id, "
            "source, batch_id, audio_key, episode_version, license, model_set, model_kind, code_version), to select "
            "samples without opening a tar:", "",
            f'```python\nimport polars as pl\n\nindex = pl.read_parquet("hf://datasets/{repo_id}/{index_path}")\n```',
            "",
        ]
    lines += _provenance_section(summary)
    lines += _sources_section(summary, sources, license)
    lines += ["## Citation", "",
              f"The processing follows Emilia: *Emilia: An Extensive, Multilingual, and Diverse Speech Dataset for "
              f"Large-Scale Speech Generation* ({EMILIA_URL}).", ""]
    return "\n".join(lines), render_figure(summary)
