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


def special_tokens() -> list[str]:
    """Whisper's special tokens in id order, starting right after the 50,257 byte-level ranks."""
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{lang}|>" for lang in LANGUAGES],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *[f"<|{i * 0.02:.2f}|>" for i in range(1501)],
    ]


def tokenizer_json(tiktoken_path: Path) -> str:
    """A `tokenizers` JSON equivalent to tiktoken's multilingual encoding, with all 51,865 ids dense."""
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
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens()])
    if tok.get_vocab_size() != VOCAB_SIZE or tok.token_to_id("<|endoftext|>") != 50_257:
        raise ValueError(f"tokenizer has {tok.get_vocab_size()} ids, expected {VOCAB_SIZE}")
    return tok.to_str()


def build(out_dir: Path, tiktoken_path: Path | None = None, seed: int = 0) -> Path:
    """Write a random-weight CTranslate2 Whisper to `out_dir` and return it (deterministic for a given seed).

    Goes through transformers + ctranslate2's own converter rather than writing model.bin by hand, so the
    files are exactly what `ct2-transformers-converter` makes from a real checkpoint. `lang_to_id` is set
    explicitly: without it the converter guesses languages from the tokenizer's extra special tokens and
    counts <|nospeech|> among them. `tiktoken_path` may be a `.gz` copy; None fetches it (`fetch_tiktoken`).
    """
    import torch
    from ctranslate2.converters import TransformersConverter
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    out_dir = Path(out_dir)
    if tiktoken_path is None:
        tiktoken_path = fetch_tiktoken()
    specials = special_tokens()
    ids = {t: 50_257 + i for i, t in enumerate(specials)}
    eot, sot, no_ts = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "hf"
        hf_dir.mkdir()
        (hf_dir / "tokenizer.json").write_text(tokenizer_json(tiktoken_path), encoding="utf-8")
        (hf_dir / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "WhisperTokenizer", "model_max_length": 448, "unk_token": "<|endoftext|>",
                        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
        )
        config = WhisperConfig(
            vocab_size=VOCAB_SIZE, num_mel_bins=80, d_model=64,
            encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=256,
            decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=256,
            max_source_positions=1500, max_target_positions=448,
            pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
            begin_suppress_tokens=[220, eot], suppress_tokens=[],
        )
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config).eval()
        model.generation_config = GenerationConfig(
            decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
            no_timestamps_token_id=no_ts, suppress_tokens=[], begin_suppress_tokens=[220, eot],
            is_multilingual=True, max_length=448,
            lang_to_id={f"<|{lang}|>": ids[f"<|{lang}|>"] for lang in LANGUAGES},
            task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        )
        model.save_pretrained(hf_dir)
        converter = TransformersConverter(str(hf_dir), copy_files=["tokenizer.json"])
        converter.convert(str(out_dir), force=True)
    return out_dir
