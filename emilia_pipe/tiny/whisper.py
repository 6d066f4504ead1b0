"""A random-weight Whisper in CTranslate2 format with the real multilingual tokenizer, for offline runs.

faster-whisper loads it exactly like a converted `openai/whisper-*` model (model.bin, config.json,
vocabulary.json, tokenizer.json), so language detection, batched decoding and word timestamps run through the
production code path; only the text is garbage. The network is tiny (d_model 64, 2 encoder + 2 decoder layers,
~19 MB) but the vocabulary is Whisper's full 51,865 ids, so every token id the code handles is the real one.

No Whisper checkpoint can be downloaded where this runs, but PyPI can: the tokenizer comes from the
`multilingual.tiktoken` file inside the openai-whisper sdist (read from the tarball, never installed).
BPE merges are not stored in a tiktoken file; they are recovered from the ranks (a token of rank r is the merge
of the two pieces BPE reaches on its bytes using only ranks below r).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

OPENAI_WHISPER_VERSION = "20250625"
TIKTOKEN_NAME = "multilingual.tiktoken"
TIKTOKEN_SHA256 = "b34b360dbb493e781e479794586d661700670d65564001f23024971d1f2fa126"
TIKTOKEN_BYTES = 816_730

# Whisper's language tokens in id order (openai-whisper's LANGUAGES, the first 99: models before large-v3).
LANGUAGES = (
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id", "hi", "fi",
    "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg", "lt", "la", "mi", "ml",
    "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs",
    "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am",
    "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln",
    "ha", "ba", "jw", "su",
)
VOCAB_SIZE = 51_865  # 50,257 ranks + 2 + 99 languages + 6 task/control tokens + 1,501 timestamps
LANGUAGES_V3 = (*LANGUAGES, "yue")  # large-v3 added Cantonese: 100 languages, 51,866 ids


@dataclass(frozen=True)
class WhisperShape:
    """A Whisper network's dimensions; the vocabulary follows from the languages (99, or 100 from large-v3 on)."""

    num_mel_bins: int = 80
    d_model: int = 64
    encoder_layers: int = 2
    decoder_layers: int = 2
    attention_heads: int = 4
    ffn_dim: int = 256
    languages: tuple[str, ...] = LANGUAGES

    @property
    def vocab_size(self) -> int:
        return 50_257 + len(special_tokens(self.languages))


TINY = WhisperShape()
# openai/whisper-large-v3's config.json: 1,550 M parameters, 128 mel bins, 32 + 32 layers of width 1280, 20 heads.
LARGE_V3 = WhisperShape(num_mel_bins=128, d_model=1280, encoder_layers=32, decoder_layers=32, attention_heads=20,
                        ffn_dim=5120, languages=LANGUAGES_V3)
# Rank 50256 is the empty byte string. It stays in the vocabulary as "" (ids after it keep their place), and
# CTranslate2 relies on it: a Whisper vocabulary that contains "" is what it takes as multilingual.
_EMPTY_RANK_TOKEN = ""


def default_cache_dir() -> Path:
    """`$EMILIA_CACHE_DIR`, else ~/.cache/emilia-forge: outlives test sessions, so PyPI is asked once per machine."""
    return Path(os.environ.get("EMILIA_CACHE_DIR") or Path.home() / ".cache" / "emilia-forge")


def fetch_tiktoken(cache_dir: Path | None = None) -> Path:
    """`cache_dir/multilingual.tiktoken`, downloading the openai-whisper sdist once with pip if it is not there.

    pip (not an HTTP client) so that the machine's index, proxy and certificate settings apply. The sdist is
    read as a tarball and never installed: openai-whisper would drag in torch pins and numba. The checksum
    pins the content, so a cache poisoned by a partial write or another version is replaced, not trusted.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / TIKTOKEN_NAME
    if target.is_file() and _sha256(target.read_bytes()) == TIKTOKEN_SHA256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
            f"openai-whisper=={OPENAI_WHISPER_VERSION}", "-d", tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        tarballs = sorted(Path(tmp).glob("openai*whisper-*.tar.gz"))
        if proc.returncode != 0 or not tarballs:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"pip download openai-whisper=={OPENAI_WHISPER_VERSION} failed: {' | '.join(tail)}")
        with tarfile.open(tarballs[0], "r:gz") as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(f"whisper/assets/{TIKTOKEN_NAME}")), None)
            if member is None:
                raise RuntimeError(f"{tarballs[0].name} has no whisper/assets/{TIKTOKEN_NAME}")
            data = tar.extractfile(member).read()
        if _sha256(data) != TIKTOKEN_SHA256:
            raise RuntimeError(f"{TIKTOKEN_NAME} from {tarballs[0].name} has an unexpected sha256 {_sha256(data)}")
        partial = Path(tmp) / TIKTOKEN_NAME
        partial.write_bytes(data)
        os.replace(partial, target)  # atomic: concurrent test workers never read half a file
    return target


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_ranks(tiktoken_path: Path) -> dict[bytes, int]:
    """`base64(token) rank` lines -> {token bytes: rank}; a `.gz` path is read through gzip (for a vendored copy)."""
    path = Path(tiktoken_path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ranks: dict[bytes, int] = {}
    for line in raw.decode("ascii").splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _byte_to_char() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which the ByteLevel pre-tokenizer/decoder assume.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to code points from 256 up.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def _merge_for(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair that BPE, allowed only ranks below `rank`, leaves for `token`: tiktoken merges it last."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while True:
        best: tuple[int, int] | None = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"rank {rank} ({token!r}) does not reduce to one merge ({len(parts)} pieces)")
    return parts[0], parts[1]


def special_tokens(languages: tuple[str, ...] = LANGUAGES) -> list[str]:
    """Whisper's special tokens in id order, starting right after the 50,257 byte-level ranks."""
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{lang}|>" for lang in languages],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *[f"<|{i * 0.02:.2f}|>" for i in range(1501)],
    ]


def tokenizer_json(tiktoken_path: Path, languages: tuple[str, ...] = LANGUAGES) -> str:
    """A `tokenizers` JSON equivalent to tiktoken's multilingual encoding, with all ids dense (51,865 for 99
    languages, 51,866 for large-v3's 100)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    ranks = load_ranks(tiktoken_path)
    to_char = _byte_to_char()

    def text(token: bytes) -> str:
        return "".join(to_char[b] for b in token)

    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if not token:
            vocab[_EMPTY_RANK_TOKEN] = rank  # unreachable by any merge
            continue
        vocab[text(token)] = rank
        if len(token) > 1:
            left, right = _merge_for(token, rank, ranks)
            merges.append((text(left), text(right)))
    if len(vocab) != 50_257:
        raise ValueError(f"{tiktoken_path}: expected 50,257 ranks, found {len(vocab)}")

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = special_tokens(languages)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    expected = 50_257 + len(specials)
    if tok.get_vocab_size() != expected or tok.token_to_id("<|endoftext|>") != 50_257:
        raise ValueError(f"tokenizer has {tok.get_vocab_size()} ids, expected {expected}")
    return tok.to_str()


def build(out_dir: Path, tiktoken_path: Path | None = None, seed: int = 0, shape: WhisperShape = TINY,
          init_device: str | None = None, quantization: str | None = None) -> Path:
    """Write a random-weight CTranslate2 Whisper to `out_dir` and return it (deterministic for a given seed).

    Goes through transformers + ctranslate2's own converter rather than writing model.bin by hand, so the
    files are exactly what `ct2-transformers-converter` makes from a real checkpoint. `lang_to_id` is set
    explicitly: without it the converter guesses languages from the tokenizer's extra special tokens and
    counts <|nospeech|> among them. `tiktoken_path` may be a `.gz` copy; None fetches it (`fetch_tiktoken`).

    `shape=LARGE_V3, quantization="float16"` builds the production size (1.55 B parameters, 3.1 GB as float16,
    as the published faster-whisper conversion stores it): its weights are drawn on `init_device` (a GPU makes that
    seconds instead of minutes) and handed to the converter in memory, never written as a transformers checkpoint.
    A `preprocessor_config.json` with the mel count goes beside it, as in the converted openai/whisper-large-v3, so
    faster-whisper computes 128-bin features for it.
    """
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    out_dir = Path(out_dir)
    if tiktoken_path is None:
        tiktoken_path = fetch_tiktoken()
    specials = special_tokens(shape.languages)
    ids = {t: 50_257 + i for i, t in enumerate(specials)}
    eot, sot, no_ts = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "hf"
        hf_dir.mkdir()
        (hf_dir / "tokenizer.json").write_text(tokenizer_json(tiktoken_path, shape.languages), encoding="utf-8")
        (hf_dir / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "WhisperTokenizer", "model_max_length": 448, "unk_token": "<|endoftext|>",
                        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
        )
        (hf_dir / "preprocessor_config.json").write_text(json.dumps({
            "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": shape.num_mel_bins,
            "sampling_rate": 16_000, "hop_length": 160, "chunk_length": 30, "n_fft": 400, "n_samples": 480_000,
            "nb_max_frames": 3000, "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False,
        }))
        config = WhisperConfig(
            vocab_size=shape.vocab_size, num_mel_bins=shape.num_mel_bins, d_model=shape.d_model,
            encoder_layers=shape.encoder_layers, encoder_attention_heads=shape.attention_heads,
            encoder_ffn_dim=shape.ffn_dim, decoder_layers=shape.decoder_layers,
            decoder_attention_heads=shape.attention_heads, decoder_ffn_dim=shape.ffn_dim,
            max_source_positions=1500, max_target_positions=448,
            pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
            begin_suppress_tokens=[220, eot], suppress_tokens=[],
        )
        torch.manual_seed(seed)
        device = torch.device(init_device or "cpu")
        with device:
            model = WhisperForConditionalGeneration(config).eval()
        if device.type != "cpu":
            model = model.half().to("cpu")
        model.generation_config = GenerationConfig(
            decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
            no_timestamps_token_id=no_ts, suppress_tokens=[], begin_suppress_tokens=[220, eot],
            is_multilingual=True, max_length=448,
            lang_to_id={f"<|{lang}|>": ids[f"<|{lang}|>"] for lang in shape.languages},
            task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        )
        config.save_pretrained(hf_dir)
        model.generation_config.save_pretrained(hf_dir)
        converter = _InMemoryConverter(model, str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"])
        converter.convert(str(out_dir), force=True, quantization=quantization)
        del model
    return out_dir


def _in_memory_converter_class():
    from ctranslate2.converters import TransformersConverter

    class InMemoryConverter(TransformersConverter):
        """ctranslate2's converter, handed the model object instead of reading a checkpoint from disk."""

        def __init__(self, model, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._model = model

        def load_model(self, model_class, model_name_or_path, **kwargs):
            return self._model

    return InMemoryConverter


def _InMemoryConverter(model, *args, **kwargs):  # noqa: N802 - a class built on demand (ctranslate2 is heavy)
    return _in_memory_converter_class()(model, *args, **kwargs)
