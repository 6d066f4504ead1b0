"""Which model each stage uses, where it comes from, and how to cache it (real) or build it (tiny).

Production names models by Hugging Face id (or URL) and `emilia-forge models fetch DIR` caches them for the
Docker image; `emilia-forge models tiny DIR` writes random-weight models in the same formats with the real
input/output names, so the demo, the tests and a cluster smoke test run the whole pipe offline through the same
loading code. Both write `DIR/models.json`, which `ModelSet.load(DIR)` reads.

`models.json` names a file inside its folder as `./<path>` relative to that folder, so the folder works from any
working directory and after a move (into an image, onto a pod); absolute paths outside it stay absolute, Hub ids
and URLs stay as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.request
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

# Production defaults. The DNSMOS files are pinned by commit and checksum (CC BY 4.0, Microsoft DNS Challenge).
WHISPER_DEFAULT = "large-v3"
DIARIZATION_DEFAULT = "pyannote/speaker-diarization-community-1"  # see emilia_pipe/diarization.py
SEPARATION_REPO, SEPARATION_FILE = "seanghay/uvr_models", "UVR-MDX-NET-Inst_HQ_3.onnx"
_DNSMOS_BASE = (
    "https://github.com/microsoft/DNS-Challenge/raw/591184a9fcb2cbdec02520fed81a32bbbf9d73ff/DNSMOS/DNSMOS/"
)
DNSMOS_FILES = {
    "sig_bak_ovr.onnx": "269fbebdb513aa23cddfbb593542ecc540284a91849ac50516870e1ac78f6edd",
    "model_v8.onnx": "9246480c58567bc6affd4200938e77eef49468c8bc7ed3776d109c07456f6e91",
}
MANIFEST = "models.json"


@dataclass(frozen=True)
class ModelSet:
    """Where each model is: a local path, or an id the stage resolves itself (faster-whisper size, HF repo id)."""

    whisper: str = WHISPER_DEFAULT
    diarization: str = DIARIZATION_DEFAULT
    separation: str = f"hf://{SEPARATION_REPO}/{SEPARATION_FILE}"
    dnsmos_sig_bak_ovr: str = _DNSMOS_BASE + "sig_bak_ovr.onnx"
    dnsmos_p808: str | None = _DNSMOS_BASE + "model_v8.onnx"
    kind: str = "hub"  # hub | cached | tiny | full-size (random weights at production size)

    def save(self, directory: Path) -> Path:
        """Paths inside `directory` are stored relative to it, so the folder can move (into an image, onto a pod).

        A relative path that exists from the working directory (as `models tiny models/tiny` produces) is a path,
        not an id: it is pinned before it is stored, so the manifest never depends on where it was written from.
        """
        doc = {k: v if k == "kind" else _to_manifest(v, Path(directory)) for k, v in asdict(self).items()}
        (Path(directory) / MANIFEST).write_text(json.dumps(doc, indent=1))
        return Path(directory) / MANIFEST

    @classmethod
    def load(cls, directory: str | Path) -> ModelSet:
        """Read `directory/models.json`, resolving its paths against `directory` (not the working directory).

        Every local path must exist: a missing one fails here, naming the manifest and the path, rather than as a
        bare `NoSuchFile` from a model loader minutes into a run.
        """
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `emilia-forge models fetch|tiny {directory}` first")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        unknown = set(doc) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        folder = directory.resolve()
        return cls(**{k: v if k == "kind" else _from_manifest(k, v, folder, path) for k, v in doc.items()})


def _is_remote(value: str) -> bool:
    return value.startswith(("hf://", "https://", "http://"))


def _to_manifest(value: str | None, directory: Path) -> str | None:
    if value is None or _is_remote(value):
        return value
    p = Path(value)
    if not p.is_absolute() and not p.exists():
        return value  # not a path from here: a Hub id or a faster-whisper size
    # abspath, not resolve: a symlink inside the folder (to a shared cache) stays inside it
    here, folder = Path(os.path.abspath(p)), Path(os.path.abspath(directory))
    if not here.is_relative_to(folder):
        here, folder = p.resolve(), directory.resolve()
    if here.is_relative_to(folder):
        return "./" + here.relative_to(folder).as_posix()
    return str(here)


# Fields a Hub repo id (`owner/name`) or a faster-whisper size (`large-v3`) may fill instead of a path.
_ID_FIELDS = {"whisper", "diarization"}


def _from_manifest(field: str, value: str | None, folder: Path, manifest: Path) -> str | None:
    """A manifest value as the stages take it: an absolute path that exists, or a Hub id / URL unchanged.

    `./x` is `folder/x`. A manifest written before paths were stored relative to their folder holds them relative
    to the working directory it was written from (`models/tiny/whisper`); such a path is found by its tail inside
    the folder (`folder/whisper`), wherever the folder is now.
    """
    if value is None or _is_remote(value):
        return value
    p = Path(value)
    if p.is_absolute():
        if not p.exists():
            raise FileNotFoundError(f"{manifest}: {field} is {value}, which does not exist")
        return value
    for i in range(len(p.parts)):
        candidate = folder.joinpath(*p.parts[i:])
        if candidate.exists():
            return str(candidate.resolve())
    if field in _ID_FIELDS and not value.startswith(".") and len(p.parts) <= 2:
        return value  # a Hub id or a model size: the stage resolves it
    raise FileNotFoundError(
        f"{manifest}: {field} path {value!r} is missing (looked inside {folder}); "
        "rebuild the folder with `emilia-forge models fetch|tiny DIR`"
    )


def resolve_file(ref: str, cache_dir: Path | None = None, token: str | None = None) -> str:
    """A local path for a file model named by path, `hf://repo/file` or an https URL (downloaded once)."""
    if ref.startswith("hf://"):
        from huggingface_hub import hf_hub_download

        owner, repo, filename = ref[len("hf://") :].split("/", 2)
        return hf_hub_download(f"{owner}/{repo}", filename, token=token, cache_dir=cache_dir)
    if ref.startswith(("https://", "http://")):
        cache = Path(cache_dir or Path.home() / ".cache/emilia-forge")
        target = cache / Path(ref).name
        if not target.is_file():
            _download(ref, target, DNSMOS_FILES.get(target.name))
        return str(target)
    return ref


def _download(url: str, target: Path, sha256: str | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=120) as resp, tmp.open("wb") as fh:
        shutil.copyfileobj(resp, fh)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    if sha256 and digest != sha256:
        tmp.unlink()
        raise ValueError(f"{url}: sha256 {digest} does not match the pinned {sha256}")
    tmp.replace(target)


def fetch(directory: Path, token: str | None = None, defaults: ModelSet | None = None) -> ModelSet:
    """Cache every production model under `directory` (for the Docker build); needs the network and HF_TOKEN."""
    from faster_whisper import download_model
    from huggingface_hub import snapshot_download

    m = defaults or ModelSet()
    directory = Path(directory).absolute()  # every path below is then absolute, whatever the working directory
    directory.mkdir(parents=True, exist_ok=True)
    whisper = download_model(m.whisper, output_dir=str(directory / "whisper"))
    diar_dir = Path(snapshot_download(m.diarization, token=token, local_dir=directory / "diarization"))
    _localize_pyannote_config(diar_dir, token)
    separation = directory / "separation" / SEPARATION_FILE
    shutil.copyfile(resolve_file(m.separation, token=token), _mkparent(separation))
    dnsmos = {}
    for name, sha in DNSMOS_FILES.items():
        _download(_DNSMOS_BASE + name, directory / "dnsmos" / name, sha)
        dnsmos[name] = str(directory / "dnsmos" / name)
    cached = ModelSet(whisper=whisper, diarization=str(diar_dir), separation=str(separation),
                      dnsmos_sig_bak_ovr=dnsmos["sig_bak_ovr.onnx"], dnsmos_p808=dnsmos["model_v8.onnx"],
                      kind="cached")
    cached.save(directory)
    return cached


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _localize_pyannote_config(pipeline_dir: Path, token: str | None) -> None:
    """A pyannote pipeline's config.yaml may name sub-models by HF id: download them into the pipeline's folder.

    A sub-model pyannote loads itself is named `$model/<subfolder>` (pyannote resolves it against the pipeline's
    folder), so the folder still works after a move. SpeechBrain/NeMo/WeSpeaker-ONNX ones are routed by their
    name and only take a path: they get an absolute one (moving the folder then needs a re-fetch).
    """
    from huggingface_hub import snapshot_download

    config_path = pipeline_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    params = config.get("pipeline", {}).get("params", {})
    for key, value in list(params.items()):
        if (isinstance(value, str) and not value.startswith("$") and value.count("/") == 1
                and not Path(pipeline_dir, value).exists()):
            subfolder = "deps--" + value.replace("/", "--")
            local = snapshot_download(value, token=token, local_dir=pipeline_dir / subfolder)
            routed_by_name = "pyannote" not in value and any(n in value for n in ("speechbrain", "nvidia", "wespeaker"))
            params[key] = str(local) if routed_by_name else f"$model/{subfolder}"
    config_path.write_text(yaml.safe_dump(config))


def tiny(directory: Path, dnsmos_dir: Path | None = None) -> ModelSet:
    """Random-weight models in the production formats (seconds to build, a few tens of MB).

    DNSMOS: the real files when `dnsmos_dir` has them (they are small), else stand-ins with the real contract.
    """
    from emilia_pipe.tiny import dnsmos as tiny_dnsmos
    from emilia_pipe.tiny import mdx as tiny_mdx
    from emilia_pipe.tiny import pyannote as tiny_pyannote
    from emilia_pipe.tiny import whisper as tiny_whisper

    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    whisper = tiny_whisper.build(directory / "whisper", tiny_whisper.fetch_tiktoken(directory / ".cache"))
    diarization = tiny_pyannote.build(directory / "diarization")
    separation = tiny_mdx.build(directory / "separation" / "tiny_mdx.onnx")
    if dnsmos_dir is not None and all((dnsmos_dir / n).is_file() for n in DNSMOS_FILES):
        (directory / "dnsmos").mkdir(exist_ok=True)
        sig, p808 = (Path(shutil.copyfile(dnsmos_dir / n, directory / "dnsmos" / n)) for n in DNSMOS_FILES)
    else:
        sig, p808 = tiny_dnsmos.build(directory / "dnsmos")
    models = ModelSet(whisper=str(whisper), diarization=str(diarization), separation=str(separation),
                      dnsmos_sig_bak_ovr=str(sig), dnsmos_p808=str(p808), kind="tiny")
    models.save(directory)
    return models


def full_size(directory: Path, dnsmos_dir: Path | None = None, init_device: str | None = None,
              whisper_shape=None, mdx_shape=None, with_whisper: bool = True, tiktoken: Path | None = None) -> ModelSet:
    """Random-weight models at production size, for timings: speed depends on shapes, not on weights.

    Whisper large-v3's dimensions (converted to CTranslate2, float16; 1.55 B parameters, drawn on `init_device`),
    an MDX-Net of UVR-MDX-NET-Inst_HQ_3's shape (`emilia_pipe.tiny.mdx_net`: file size and FLOPs documented there),
    pyannote's real architectures at community-1's segmentation step 0.1, and the real DNSMOS files from
    `dnsmos_dir` (required: they are small and their cost is what is measured). `whisper_shape` / `mdx_shape`
    override the sizes (tests build scaled-down ones through the same code). `with_whisper=False` skips Whisper
    (a machine where CTranslate2 cannot use the GPU measures the other stages); `tiktoken` is Whisper's tokenizer
    file for a machine without PyPI. Writes `DIR/models.json` with `kind: full-size` and `DIR/model_sizes.json`
    (parameters, file bytes, FLOPs).
    """
    from emilia_pipe.tiny import mdx_net
    from emilia_pipe.tiny import pyannote as tiny_pyannote
    from emilia_pipe.tiny import whisper as tiny_whisper

    if dnsmos_dir is None or not all((Path(dnsmos_dir) / n).is_file() for n in DNSMOS_FILES):
        raise FileNotFoundError(f"full-size models need the real DNSMOS files {sorted(DNSMOS_FILES)} in --dnsmos "
                                f"(got {dnsmos_dir})")
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    wshape = whisper_shape or tiny_whisper.LARGE_V3
    mshape = mdx_shape or mdx_net.MdxNetShape()
    whisper: str | Path = WHISPER_DEFAULT  # an id no stage resolves while ASR is off
    if with_whisper:
        if tiktoken is not None:
            (directory / ".cache").mkdir(exist_ok=True)
            shutil.copyfile(tiktoken, directory / ".cache" / Path(tiktoken).name)
        whisper = tiny_whisper.build(directory / "whisper", tiny_whisper.fetch_tiktoken(directory / ".cache"),
                                     shape=wshape, init_device=init_device, quantization="float16")
    diarization = tiny_pyannote.build(directory / "diarization", segmentation_step=tiny_pyannote.PRODUCTION_STEP)
    separation = mdx_net.build(directory / "separation" / "mdx_net_inst_hq3_shape.onnx", mshape)
    (directory / "dnsmos").mkdir(exist_ok=True)
    sig, p808 = (Path(shutil.copyfile(Path(dnsmos_dir) / n, directory / "dnsmos" / n)) for n in DNSMOS_FILES)
    models = ModelSet(whisper=str(whisper), diarization=str(diarization), separation=str(separation),
                      dnsmos_sig_bak_ovr=str(sig), dnsmos_p808=str(p808), kind="full-size")
    models.save(directory)
    sizes = {
        "whisper": {"shape": {k: v for k, v in asdict(wshape).items() if k != "languages"},
                    "languages": len(wshape.languages),
                    "model_bin_bytes": (Path(whisper) / "model.bin").stat().st_size} if with_whisper else None,
        "separation": mdx_net.describe(mshape, separation),
        "diarization": {"segmentation_step": tiny_pyannote.PRODUCTION_STEP, "architectures":
                        "PyanNet (segmentation-3.0 shape) + WeSpeakerResNet34 (community-1's embedding)"},
        "dnsmos": {"files": {n: (directory / "dnsmos" / n).stat().st_size for n in DNSMOS_FILES}, "real": True},
    }
    (directory / "model_sizes.json").write_text(json.dumps(sizes, indent=1))
    return models
