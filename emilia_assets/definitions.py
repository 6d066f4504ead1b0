"""The CPU code location (`emilia_forge`): sources, ingest, probing (raw_episodes), publishing (hf_shards) and the
dataset report (dataset_report).

processed_segments lives in the GPU location, `emilia_assets.gpu_definitions` (`emilia_gpu`), which imports the
resource builders below; the two locations meet in the instance through asset keys and the "episode_batches" set.

Resources come from the environment: with `R2_BUCKET` unset everything runs on the embedded default (a local
directory store under `EMILIA_LOCAL_STORE`, default ./data); with it set, S3/R2 with credentials read through
`dg.EnvVar`, so they are resolved at run time and never stored in run config or shown in the UI.
"""

from __future__ import annotations

import os

import dagster as dg

from emilia_assets.assets.ingest import raw_episodes
from emilia_assets.assets.publish import hf_shards
from emilia_assets.assets.report import dataset_report
from emilia_assets.assets.sources import podcast_episodes, youtube_audio
from emilia_assets.jobs import podcast_ingest_job, probe_job, publish_job, youtube_ingest_job
from emilia_pipe.settings import ALL_STAGES
from resources.batching import BatchingResource
from resources.gpu_pool import GpuPoolResource
from resources.huggingface import HuggingFaceResource
from resources.object_store import ObjectStoreResource
from resources.pipe import EmiliaPipeResource
from sensors.publish import publish_sensor
from sensors.raw_audio import raw_audio_sensor
from sensors.report import dataset_report_sensor
from sensors.sources import refresh_podcasts_schedule, refresh_youtube_schedule, sources_sensor


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def object_store_from_env() -> ObjectStoreResource:
    common = {
        "raw_prefix": _env("RAW_AUDIO_PREFIX", "raw_audio/"),
        "processed_prefix": _env("PROCESSED_PREFIX", "processed/"),
    }
    if not os.environ.get("R2_BUCKET"):
        return ObjectStoreResource(local_root=_env("EMILIA_LOCAL_STORE", "data"), **common)
    return ObjectStoreResource(
        bucket=dg.EnvVar("R2_BUCKET"),
        endpoint_url=dg.EnvVar("R2_ENDPOINT_URL") if os.environ.get("R2_ENDPOINT_URL") else "",
        access_key_id=dg.EnvVar("R2_ACCESS_KEY_ID"),
        secret_access_key=dg.EnvVar("R2_SECRET_ACCESS_KEY"),
        region_name=_env("R2_REGION", "auto"),
        key_prefix=_env("R2_KEY_PREFIX", ""),
        checksums=_env("S3_CHECKSUMS", "auto"),
        addressing_style=_env("S3_ADDRESSING_STYLE", "auto"),
        retry_mode=_env("S3_RETRY_MODE", "standard"),
        max_attempts=int(_env("S3_MAX_ATTEMPTS", "6")),
        ca_bundle=_env("S3_CA_BUNDLE", ""),
        **common,
    )


def batching_from_env() -> BatchingResource:
    return BatchingResource(
        max_episodes=int(_env("BATCH_MAX_EPISODES", "200")),
        max_gib=float(_env("BATCH_MAX_GIB", "20")),
        page_size=int(_env("SENSOR_PAGE_SIZE", "1000")),
        max_pages_per_tick=int(_env("SENSOR_MAX_PAGES_PER_TICK", "5")),
    )


def pipe_from_env() -> EmiliaPipeResource:
    stages = os.environ.get("EMILIA_STAGES")
    return EmiliaPipeResource(
        models_dir=_env("EMILIA_MODELS_DIR", ""),
        stages=[s.strip() for s in stages.split(",") if s.strip()] if stages is not None else list(ALL_STAGES),
        device=_env("EMILIA_DEVICE", "auto"),
        hf_token=dg.EnvVar("HF_TOKEN") if os.environ.get("HF_TOKEN") else "",
        whisper_model=_env("WHISPER_MODEL", ""),
        asr_batch_size=int(_env("BATCH_SIZE", "16")),
        asr_language=_env("ASR_LANGUAGE", ""),
        separation_chunk_s=float(_env("SEPARATION_CHUNKS", "30")),
    )


def gpu_pool_from_env() -> GpuPoolResource:
    return GpuPoolResource(
        workers_per_gpu=int(_env("WORKERS_PER_GPU", "1")),
        max_gpus=int(_env("MAX_GPUS", "0")),
        cpu_workers=int(_env("EMILIA_CPU_WORKERS", "1")),
        prefetch_gib=float(_env("PREFETCH_GIB", "16")),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[podcast_episodes, youtube_audio, raw_episodes, hf_shards, dataset_report],
        jobs=[probe_job, publish_job, podcast_ingest_job, youtube_ingest_job],
        sensors=[raw_audio_sensor, publish_sensor, sources_sensor, dataset_report_sensor],
        schedules=[refresh_podcasts_schedule, refresh_youtube_schedule],
        resources={
            "store": object_store_from_env(),
            "batching": batching_from_env(),
            "pipe": pipe_from_env(),
            "hf": HuggingFaceResource(
                repo_id=_env("HF_REPO_ID", ""),
                token=dg.EnvVar("HF_TOKEN") if os.environ.get("HF_TOKEN") else "",
                endpoint=_env("HF_ENDPOINT", ""),
                test_release=_env("HF_TEST_RELEASE", "0").lower() in ("1", "true", "yes"),
            ),
        },
    )
