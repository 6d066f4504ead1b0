"""The dataset card (README.md with the YAML header the Hub reads) and its distribution figure, from the index.

Everything in the card is computed from the release index, so it cannot drift from what was uploaded, and the same
index renders byte-identical text and PNG: a re-publish with nothing new changes no file on the Hub.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
import yaml

from emilia_publish.filters import PublishFilters

FIGURE_PATH = "assets/distributions.png"
EMILIA_URL = "https://arxiv.org/abs/2407.05361"
TASK_CATEGORIES = ["text-to-speech", "automatic-speech-recognition"]
TAGS = ["audio", "speech", "emilia", "webdataset", "podcasts"]
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)

# The fields of each sample's `<key>.json` (emilia_assets.assets.publish.sample_meta): name -> (datasets dtype,
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


def _languages(index: pl.DataFrame) -> list[str]:
    return sorted(index["language"].fill_null("und").unique().to_list())


def _by_language(index: pl.DataFrame) -> pl.DataFrame:
    return (
        index.with_columns(pl.col("language").fill_null("und"))
        .group_by("language")
        .agg(
            pl.len().alias("segments"),
            (pl.col("duration").sum() / 3600).alias("hours"),
            pl.col("speaker").n_unique().alias("speakers"),
            pl.col("episode_id").n_unique().alias("episodes"),
            pl.col("shard").n_unique().alias("shards"),
        )
        .sort("language")
    )


def hours_per_language(index: pl.DataFrame) -> dict[str, float]:
    """Hours of audio per language code (null language as `und`): what the card's language table shows."""
    return {r["language"]: r["hours"] for r in _by_language(index).iter_rows(named=True)}


def _header(index: pl.DataFrame, repo_id: str, license: str, pretty_name: str) -> str:
    languages = _languages(index)
    configs: list[dict[str, Any]] = [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/*/*.tar"}]}
    ]
    configs += [{"config_name": lang, "data_files": [{"split": "train", "path": f"data/{lang}/*.tar"}]}
                for lang in languages]
    meta = {
        "license": license,
        "language": [lang for lang in languages if _ISO_CODE.match(lang) and lang != "und"],
        "pretty_name": pretty_name,
        "task_categories": TASK_CATEGORIES,
        "size_categories": [size_category(index.height)],
        "tags": TAGS,
        "configs": configs,
    }
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)


def _quantile_rows(index: pl.DataFrame, column: str, digits: int) -> list[str]:
    head = ["Language", "n", "mean", "min", *(f"p{round(q * 100)}" for q in QUANTILES), "max"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    groups = [(lang, index.filter(pl.col("language").fill_null("und") == lang)) for lang in _languages(index)]
    groups.append(("**all**", index))
    for name, g in groups:
        values = g[column].drop_nulls().drop_nans() if g[column].dtype.is_float() else g[column].drop_nulls()
        if values.is_empty():
            cells = ["0"] + ["–"] * (len(head) - 2)
        else:
            stats = [values.mean(), values.min(), *(values.quantile(q, "linear") for q in QUANTILES), values.max()]
            cells = [str(values.len())] + [_fmt(float(v), digits) for v in stats]
        label = name if name.startswith("**") else f"`{name}`"
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return lines


def _sources_section(index: pl.DataFrame, sources: Sequence[dict[str, Any]] | None, license: str) -> list[str]:
    per_source = {
        r["source"]: r for r in index.with_columns(pl.col("source").fill_null("(unknown)"))
        .group_by("source").agg(pl.len().alias("segments"), (pl.col("duration").sum() / 3600).alias("hours"))
        .iter_rows(named=True)
    }
    lines = [
        "## Sources and licences", "",
        f"The dataset is released under `{license}`, as Emilia. The audio remains subject to the terms of the "
        "sources it was taken from:", "",
    ]
    if not sources:
        lines += ["Source licences were not recorded for this release. Sources by name (the `source` field):", "",
                  "| Source | Segments | Hours |", "|---|---:|---:|"]
        lines += [f"| {name} | {r['segments']} | {r['hours']:.3f} |" for name, r in sorted(per_source.items())]
        return lines + [""]
    entries = sorted(
        ({"name": str(s.get("name") or s.get("source_id") or ""), "url": str(s.get("url") or ""),
          "license": str(s.get("license") or "not recorded")} for s in sources),
        key=lambda e: (e["name"], e["url"]),
    )
    lines += ["| Source | URL | Licence | Segments | Hours |", "|---|---|---|---:|---:|"]
    by_licence: dict[str, dict[str, float]] = {}
    listed = set()
    for e in entries:
        r = per_source.get(e["name"], {"segments": 0, "hours": 0.0})
        listed.add(e["name"])
        url = f"<{e['url']}>" if e["url"] else "–"
        lines.append(f"| {e['name']} | {url} | {e['license']} | {r['segments']} | {r['hours']:.3f} |")
        agg = by_licence.setdefault(e["license"], {"sources": 0, "segments": 0, "hours": 0.0})
        agg["sources"] += 1
        agg["segments"] += r["segments"]
        agg["hours"] += r["hours"]
    unlisted = sorted(set(per_source) - listed)
    for name in unlisted:
        r = per_source[name]
        lines.append(f"| {name} | – | not recorded | {r['segments']} | {r['hours']:.3f} |")
        agg = by_licence.setdefault("not recorded", {"sources": 0, "segments": 0, "hours": 0.0})
        agg["sources"] += 1
        agg["segments"] += r["segments"]
        agg["hours"] += r["hours"]
    lines += ["", "By licence:", "", "| Licence | Sources | Segments | Hours |", "|---|---:|---:|---:|"]
    lines += [f"| {lic} | {int(a['sources'])} | {int(a['segments'])} | {a['hours']:.3f} |"
              for lic, a in sorted(by_licence.items())]
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
    return [
        "## Loading", "",
        "Shards are plain WebDataset tars, so any tar reader works. With "
        "[webdataset](https://github.com/webdataset/webdataset):", "", wds_snippet, "",
        "With 🤗 `datasets` (one config per language, `default` for all):", "", ds_snippet, "",
        "`datasets` decodes `mp3` as `Audio`, which needs `torchcodec`. Without it, declare the features and "
        "decode with soundfile:", "", ds_cpu_snippet, "",
    ]


def render_figure(index: pl.DataFrame) -> bytes:
    """Histograms of DNSMOS OVRL and segment duration, one step line per language, as PNG bytes.

    Built on a bare `Figure` with the Agg canvas (no pyplot state, safe in a worker thread); fixed bins, sizes and
    no Software/date metadata keep the PNG byte-identical for the same index. matplotlib is imported here, in the
    publish run, so that loading the code location does not pay for it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_mos, ax_dur = fig.subplots(1, 2)
    mos_bins = np.linspace(1.0, 5.0, 41)
    max_dur = float(index["duration"].max() or 0.0) if index.height else 0.0
    dur_bins = np.arange(0.0, max(30.0, math.ceil(max_dur)) + 1.0, 1.0)
    any_mos = False
    for lang in _languages(index):
        g = index.filter(pl.col("language").fill_null("und") == lang)
        mos = g["dnsmos"].drop_nulls().drop_nans().to_numpy()
        dur = g["duration"].drop_nulls().to_numpy()
        if mos.size:
            any_mos = True
            ax_mos.hist(mos, bins=mos_bins, histtype="step", linewidth=1.5, label=f"{lang} ({mos.size})")
        if dur.size:
            ax_dur.hist(dur, bins=dur_bins, histtype="step", linewidth=1.5, label=f"{lang} ({dur.size})")
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
    index: pl.DataFrame,
    *,
    repo_id: str,
    license: str = "cc-by-nc-4.0",
    sources: list[dict] | None = None,
    pretty_name: str = "Emilia Forge",
    filters: PublishFilters | None = None,
    index_path: str | None = None,
) -> tuple[str, bytes]:
    """README.md text and the PNG it shows at `assets/distributions.png`, both from the release index.

    `index` has the columns of `emilia_publish.index.INDEX_SCHEMA`. `sources` lists the sources' `name` (as in the
    samples' `source` field), `url` and `license`. `filters`, when given, are stated as the ones the release
    applied; `index_path`, when given, is where the index Parquet lives in the repo, for a polars snippet.
    """
    languages = _languages(index)
    by_lang = _by_language(index)
    hours = float(index["duration"].sum() or 0.0) / 3600
    speakers = index["speaker"].n_unique() if index.height else 0
    episodes = index["episode_id"].n_unique() if index.height else 0
    n_sources = index["source"].n_unique() if index.height else 0
    lines = [
        "---", _header(index, repo_id, license, pretty_name).rstrip("\n"), "---", "",
        f"# {pretty_name}", "",
        f"{pretty_name} is an in-the-wild speech dataset in the [Emilia]({EMILIA_URL}) format, for speech generation "
        "and recognition: podcast and video audio processed by the Emilia pipeline (standardisation, source "
        "separation, speaker diarization, VAD segmentation, Whisper ASR, DNSMOS) into single-speaker segments, "
        "packed as WebDataset shards of `<key>.mp3` + `<key>.json`.", "",
        # Hours keep the plural: a decimal ("1.000 hours") reads plural in English.
        f"**{count(index.height, 'segment')}, {hours:.3f} hours, {count(len(languages), 'language')}, "
        f"{count(speakers, 'speaker')}, {count(episodes, 'episode')}, {count(n_sources, 'source')}.**", "",
        "## Languages", "",
        "| Language | Name | Segments | Hours | Speakers | Episodes | Shards |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in by_lang.iter_rows(named=True):
        lines.append(f"| `{r['language']}` | {LANGUAGE_NAMES.get(r['language'], r['language'])} | {r['segments']} | "
                     f"{r['hours']:.3f} | {r['speakers']} | {r['episodes']} | {r['shards']} |")
    shards = index["shard"].n_unique() if index.height else 0
    lines += [
        f"| **all** | | {index.height} | {hours:.3f} | {speakers} | {episodes} | {shards} |", "",
        "Each language is a config (`data/<language>/*.tar`); `default` holds them all.", "",
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
    lines += ["", "### DNSMOS OVRL", "", *_quantile_rows(index, "dnsmos", 2), "",
              "### Segment duration (seconds)", "", *_quantile_rows(index, "duration", 2), "",
              f"![DNSMOS OVRL and segment duration per language]({FIGURE_PATH})", ""]
    lines += ["## Sample format", "",
              "Every sample is two members of a tar shard: `<key>.mp3` (24 kHz mono MP3) and `<key>.json`:", "",
              "| Field | Type | Meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {dtype} | {meaning} |" for name, (dtype, meaning) in SAMPLE_FIELDS.items()]
    lines.append("")
    lines += _loading_section(repo_id, languages)
    if index_path:
        lines += [
            f"`{index_path}` lists every sample (key, shard, language, duration, speaker, dnsmos, text, episode_id, "
            "source, batch_id), to select samples without opening a tar:", "",
            f'```python\nimport polars as pl\n\nindex = pl.read_parquet("hf://datasets/{repo_id}/{index_path}")\n```',
            "",
        ]
    lines += _sources_section(index, sources, license)
    lines += ["## Citation", "",
              f"The processing follows Emilia: *Emilia: An Extensive, Multilingual, and Diverse Speech Dataset for "
              f"Large-Scale Speech Generation* ({EMILIA_URL}).", ""]
    return "\n".join(lines), render_figure(index)
