"""A random-weight pyannote 4 speaker-diarization pipeline folder, laid out like `speaker-diarization-community-1`.

The folder is what `Pipeline.from_pretrained(folder)` reads for the real model, so `PyannoteDiarizer` loads it through
the production code path with no network:

    config.yaml                      SpeakerDiarization + VBxClustering; sub-models named `$model/<subfolder>`
    segmentation/pytorch_model.bin   PyanNet in segmentation-3.0's shape (SincNet, 4 x BiLSTM 128, powerset 3 speakers
                                     / 2 overlapping = 7 classes, 10 s windows), 1.47M parameters
    embedding/pytorch_model.bin      WeSpeakerResNet34 (256-d, the architecture community-1 bundles), 6.6M parameters
    plda/xvec_transform.npz          mean1 (256), mean2 (128), lda (256 x 128)
    plda/plda.npz                    mu (128), tr (128 x 128), psi (128)

Checkpoints are written the way pyannote writes its own (`state_dict`, `hyper_parameters`, and the
`pyannote.audio` block with versions, architecture and task specifications), so `Model.from_pretrained` rebuilds
the right class. `$model/...` references expand to `{"checkpoint": folder, "subfolder": ...}` dicts, which pyannote
loads from disk; a dict also sends the embedding to pyannote's own loader whatever the folder is called (a plain
string path is routed by substring, and one that contains "wespeaker" but not "pyannote" would go to the ONNX
loader and fail).

The segmentation window slides by half its length (`segmentation_step: 0.5`, production uses 0.1): five times fewer
segmentation and embedding passes, which is what makes a CPU test fast. `build(..., segmentation_step=0.1)` gives
community-1's own step, for production-size timings (the architectures are already the real ones). Weights come from
a fixed seed, so two builds hold the same tensors; only the output's meaning is random (speakers found are not the
real ones).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

SEED = 20_251_127
EMBEDDING_DIM = 256  # WeSpeakerResNet34's output
PLDA_DIM = 128  # community-1's LDA dimension, and PLDA's default `lda_dimension`
SEGMENTATION_STEP = 0.5
PRODUCTION_STEP = 0.1  # speaker-diarization-community-1's config.yaml


def _save_checkpoint(model, path: Path) -> None:
    """Save like pyannote's own converters: the Lightning checkpoint keys plus pyannote's `on_save_checkpoint` block."""
    import lightning
    import torch

    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def _segmentation(path: Path) -> None:
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.segmentation import PyanNet

    model = PyanNet(
        sincnet={"stride": 10},
        lstm={"hidden_size": 128, "num_layers": 4, "bidirectional": True, "monolithic": True, "dropout": 0.5},
        linear={"hidden_size": 128, "num_layers": 2},
    )
    model.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION,
        resolution=Resolution.FRAME,
        duration=10.0,
        warm_up=(0.0, 0.0),
        classes=["speaker#1", "speaker#2", "speaker#3"],
        powerset_max_classes=2,
        permutation_invariant=True,
    )
    model.build()  # the powerset classifier and activation depend on the specifications
    _save_checkpoint(model, path)


def _embedding(path: Path) -> None:
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import WeSpeakerResNet34

    model = WeSpeakerResNet34()
    # What pyannote's WeSpeaker converter declares: a chunk-level representation (the duration is nominal).
    model.specifications = Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=5.0)
    _save_checkpoint(model, path)


def _plda(directory: Path, rng: np.random.Generator) -> None:
    """A valid random PLDA: `tr` orthogonal (so the within-class covariance is invertible), `psi` positive."""
    directory.mkdir(parents=True, exist_ok=True)
    lda = rng.standard_normal((EMBEDDING_DIM, PLDA_DIM)) / np.sqrt(EMBEDDING_DIM)
    np.savez(
        directory / "xvec_transform.npz",
        mean1=rng.standard_normal(EMBEDDING_DIM) * 0.01,
        mean2=rng.standard_normal(PLDA_DIM) * 0.01,
        lda=lda,
    )
    tr, _ = np.linalg.qr(rng.standard_normal((PLDA_DIM, PLDA_DIM)))
    psi = np.sort(rng.uniform(0.1, 5.0, PLDA_DIM))[::-1].copy()  # between-class variances, largest first
    np.savez(directory / "plda.npz", mu=rng.standard_normal(PLDA_DIM) * 0.01, tr=tr, psi=psi)


def config(segmentation_step: float = SEGMENTATION_STEP) -> dict:
    """community-1's config.yaml, by default with a coarser segmentation step (see module docstring)."""
    return {
        "dependencies": {"pyannote.audio": "4.0.0"},
        "pipeline": {
            "name": "pyannote.audio.pipelines.SpeakerDiarization",
            "params": {
                "clustering": "VBxClustering",
                "segmentation": "$model/segmentation",
                "segmentation_step": segmentation_step,
                "segmentation_batch_size": 32,
                "embedding": "$model/embedding",
                "embedding_batch_size": 32,
                "embedding_exclude_overlap": True,
                "plda": "$model/plda",
            },
        },
        "params": {
            "clustering": {"threshold": 0.6, "Fa": 0.07, "Fb": 0.8},
            "segmentation": {"min_duration_off": 0.0},
        },
    }


def build(out_dir: Path, segmentation_step: float = SEGMENTATION_STEP) -> Path:
    """Write the pipeline folder (about 33 MB, a few seconds on CPU) and return it, for `Pipeline.from_pretrained`."""
    # Importing pyannote sets PYANNOTE_METRICS_ENABLED=true when it is unset, which child processes would inherit.
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # seed locally: leave the caller's RNG stream untouched
        torch.manual_seed(SEED)
        _segmentation(out_dir / "segmentation" / "pytorch_model.bin")
        _embedding(out_dir / "embedding" / "pytorch_model.bin")
    _plda(out_dir / "plda", np.random.default_rng(SEED))
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config(segmentation_step), sort_keys=False))
    return out_dir
