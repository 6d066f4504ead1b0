"""Driving the real assets and sensor in-process, on a store the test seeds."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import dagster as dg
import polars as pl
import soundfile as sf

from emilia_assets.assets.ingest import raw_episodes
from emilia_assets.assets.process import processed_segments
from emilia_assets.assets.publish import hf_shards
from emilia_assets.definitions import defs
from resources.batching import BatchingResource
from resources.gpu_pool import GpuPoolResource
from resources.huggingface import HuggingFaceResource
from resources.object_store import ObjectStoreResource
from resources.pipe import EmiliaPipeResource
from sensors.raw_audio import raw_audio_sensor

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def seed_samples(root: Path, stems: list[str], source: str = "show", language: str = "en") -> list[str]:
    keys = []
    for stem in stems:
        key = f"raw_audio/{language}/{source}/{stem}.mp3"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLES / f"{stem}.mp3", root / key)
        keys.append(key)
    return keys


def seed_short_clips(store_root: Path, n: int, seconds: float = 3.0, source: str = "pool") -> list[str]:
    """n different speech clips of a few seconds, cut from the bundled samples, as raw audio; returns their keys."""
    audio, rate = sf.read(SAMPLES / "monologue.mp3")
    step = int(seconds * rate)
    keys = []
    for i in range(n):
        key = f"raw_audio/en/{source}/clip{i}.wav"
        (store_root / key).parent.mkdir(parents=True, exist_ok=True)
        sf.write(store_root / key, audio[i * step:(i + 1) * step], rate)
        keys.append(key)
    return keys


def batch_from_sensor(instance: dg.DagsterInstance, store: ObjectStoreResource, max_episodes: int = 200) -> list[str]:
    ctx = dg.build_sensor_context(instance=instance, cursor=None, definitions=defs(),
                                  resources={"store": store, "batching": BatchingResource(max_episodes=max_episodes)})
    result = raw_audio_sensor(ctx)
    ids: list[str] = []
    for req in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        ids += list(req.partition_keys)
    return ids


def materialize_batch(instance, store: ObjectStoreResource, batch_id: str, max_failure_fraction: float = 0.5,
                      max_shard_mb: float = 512.0, raise_on_error: bool = True, selection=None,
                      pipe: EmiliaPipeResource | None = None, hf: HuggingFaceResource | None = None,
                      gpu_pool: GpuPoolResource | None = None, test_release: bool = False):
    """Default pipe: the cheap stages only (`EmiliaPipeResource(stages=[])`); pass `full_pipe` for every stage
    (random-weight models: publishing them needs `test_release=True`)."""
    assets = [raw_episodes, processed_segments, hf_shards]
    chosen = {a.key.to_user_string() for a in (selection or assets)}
    ops = {
        "processed_segments": {"config": {"max_failure_fraction": max_failure_fraction}},
        "hf_shards": {"config": {"max_shard_mb": max_shard_mb, **({"test_release": True} if test_release else {})}},
    }
    return dg.materialize(
        assets,
        selection=selection,
        partition_key=batch_id,
        instance=instance,
        resources={"store": store, "pipe": pipe or EmiliaPipeResource(stages=[]), "hf": hf or HuggingFaceResource(),
                   "gpu_pool": gpu_pool or GpuPoolResource()},
        run_config={"ops": {k: v for k, v in ops.items() if k in chosen}},
        raise_on_error=raise_on_error,
    )


def metadata(result, asset: str) -> dict:
    mats = result.asset_materializations_for_node(asset)
    assert len(mats) == 1
    return {k: v.value for k, v in mats[0].metadata.items()}


def read_tar(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def assert_paired(members: dict[str, bytes]) -> list[dict]:
    """Every `<key>.mp3` has its `<key>.json` and nothing else is in the tar; returns the JSON sidecars."""
    stems = {name.rsplit(".", 1)[0] for name in members}
    assert set(members) == {f"{s}.mp3" for s in stems} | {f"{s}.json" for s in stems}
    return [json.loads(members[f"{s}.json"]) for s in sorted(stems)]


ALL_STAGES = ["standardize", "separate", "diarize", "vad", "asr", "dnsmos", "export"]


def assert_every_stage_ran(doc: dict) -> None:
    """From an episode's all_segments.json: each stage has a recorded time and its output is there."""
    episode, segments = doc["episode"], doc["segments"]
    assert episode["stages"] == list(episode["stage_seconds"]) == ALL_STAGES, episode
    assert all(t > 0 for t in episode["stage_seconds"].values()), episode["stage_seconds"]
    assert episode["separation_removed_db"] > -120.0, "separation returned the mix unchanged"
    assert segments, "an episode with speech has segments"
    assert all(s["text"] for s in segments), "ASR gave every kept segment a text"
    assert all({"sig", "bak", "ovrl"} <= set(s["dnsmos"] or {}) for s in segments), "DNSMOS scored every segment"
    assert all(s["speaker"].startswith(f"{episode['episode_id']}_S") for s in segments)


def status_table(root: Path, batch_id: str) -> pl.DataFrame:
    return pl.read_parquet(root / "processed/_batches" / f"{batch_id}.parquet")
