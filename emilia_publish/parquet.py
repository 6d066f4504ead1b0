"""Parquet beside each WebDataset shard: the same samples, the audio inside as `datasets`' Audio struct.

One Parquet file per tar (`data/<lang>/<batch>-<n>.parquet` beside `<batch>-<n>.tar`), written from the tar itself,
so the two can never disagree: the same keys (`id`), the same MP3 bytes (`audio.bytes`), the same fields. The audio
column is `{bytes: binary, path: string}`, the Arrow type of `datasets.Audio`, and the file's schema metadata
declares the features (`huggingface` key), so `datasets` and the Hub's viewer see an `Audio` column (24 kHz) and the
viewer plays it. Row groups of `ROWS_PER_GROUP` samples (a few MB) let a streaming reader or the viewer fetch a page
without the whole file; the writer's settings are fixed, so the same tar gives the same bytes.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from emilia_publish.card import SAMPLE_FIELDS, SAMPLING_RATE

ROWS_PER_GROUP = 100  # what `datasets` uses for audio datasets: ~100 segments of <= 30 s MP3 = a few MB
MAX_PARQUET_BYTES = 2 * 2**30  # the Hub's viewer and many readers want files under 2 GiB
_ARROW_TYPES = {"string": "string", "float64": "float64", "int64": "int64", "bool": "bool"}


def features() -> dict[str, Any]:
    """The `datasets` features of the Parquet files (what `Features.to_dict()` gives): audio, then the fields."""
    out: dict[str, Any] = {"audio": {"sampling_rate": SAMPLING_RATE, "_type": "Audio"}}
    out.update({name: {"dtype": dtype, "_type": "Value"} for name, (dtype, _) in SAMPLE_FIELDS.items()})
    return out


def arrow_schema() -> Any:
    import pyarrow as pa

    fields = [pa.field("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))]
    fields += [pa.field(name, getattr(pa, _ARROW_TYPES[dtype])()) for name, (dtype, _) in SAMPLE_FIELDS.items()]
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features()}})})


def read_tar_samples(path: Path) -> list[tuple[str, bytes, dict[str, Any]]]:
    """(key, mp3 bytes, JSON sidecar) per sample, in tar order."""
    members: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if not m.isfile():
                continue
            key, _, ext = PurePosixPath(m.name).name.partition(".")
            if key not in members:
                members[key] = {}
                order.append(key)
            members[key][ext] = tar.extractfile(m).read()
    out = []
    for key in order:
        got = members[key]
        if "mp3" not in got or "json" not in got:
            raise ValueError(f"{path}: sample {key!r} lacks its .mp3 or .json member (has {sorted(got)})")
        out.append((key, got["mp3"], json.loads(got["json"])))
    return out


def shard_to_parquet(tar_path: Path, parquet_path: Path) -> int:
    """Write the tar's samples as Parquet; returns the number of rows. Refuses a file of 2 GiB or more."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    samples = read_tar_samples(tar_path)
    schema = arrow_schema()
    columns: dict[str, list[Any]] = {"audio": [{"bytes": mp3, "path": f"{key}.mp3"} for key, mp3, _ in samples]}
    for name in SAMPLE_FIELDS:
        columns[name] = [meta.get(name) for _, _, meta in samples]
    table = pa.Table.from_pydict(columns, schema=schema)
    pq.write_table(table, parquet_path, row_group_size=ROWS_PER_GROUP, compression="zstd",
                   use_dictionary=[n for n in SAMPLE_FIELDS if SAMPLE_FIELDS[n][0] == "string"],
                   write_statistics=True)
    size = parquet_path.stat().st_size
    if size >= MAX_PARQUET_BYTES:
        raise ValueError(f"{parquet_path.name}: {size} bytes, over the 2 GiB a Parquet file may have; "
                         "lower max_shard_mb")
    return len(samples)
