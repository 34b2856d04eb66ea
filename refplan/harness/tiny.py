"""Offline builders: a random-weight Llama-shaped model, a BPE tokenizer trained here, and a synthetic
preference dataset with exact token lengths.

Nothing is downloaded. Models are saved to a cache directory (``$REFPLAN_CACHE`` or
``~/.cache/refplan``) because TRL reloads its automatic reference from ``config._name_or_path``: a
model built with ``from_config`` and never saved cannot be reloaded.

Token lengths. Every synthetic word is one token of the trained vocabulary, and the tokenizer has no
post-processor (it adds no special tokens by itself), so a text of ``n`` words is exactly ``n``
tokens. TRL then adds its own special tokens: DPO and KTO append EOS (``prompt + completion + 1``);
ORPO and CPO add BOS and EOS (``1 + prompt + completion + 1``). :func:`split_lengths` chooses prompt
and completion lengths so that every method sees exactly ``seq`` tokens per sequence.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
RANDOM_PREFIX = "random:"


@dataclass(frozen=True)
class TinyModel:
    """A Llama-shaped config with random weights. Dropout is off everywhere (exact parity)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int  # the model's vocabulary; the tokenizer's is ``tokenizer_vocab`` (<= this)
    tokenizer_vocab: int = 1024
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    family: str = "llama"  # "llama" or "qwen2"
    save_dtype: str = "fp32"  # dtype of the saved weights (the harness loads in the scenario's dtype)
    provenance: str = "refplan synthetic preset"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


#: Named presets. ``random:<name>`` on the command line builds one of these.
PRESETS: dict[str, TinyModel] = {
    # CPU default (refplan/suites/default.toml: batch 2, seq 256): a DPO step takes ~0.5 s on 2 cores,
    # large enough that the tracker's per-op cost (~15 us per aten op, ~1600 ops a step) stays a
    # few % of the step.
    "tiny": TinyModel("tiny", hidden_size=384, intermediate_size=1024, num_layers=4, num_heads=6,
                      num_kv_heads=2, vocab_size=1024),
    # tests: as small as still exercises GQA, LoRA and the fused head.
    "micro": TinyModel("micro", hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                       num_kv_heads=2, vocab_size=512, tokenizer_vocab=512),
    # sharded bursts (refplan/suites/sharded.toml): weights outweigh a short sequence's activations
    # (13.9M parameters, vocab 512), so what sharding splits dominates every rank's peak.
    "wide": TinyModel("wide", hidden_size=512, intermediate_size=1536, num_layers=4, num_heads=8,
                      num_kv_heads=8, vocab_size=512, tokenizer_vocab=512),
    # GPU script: ~0.5B parameters, Llama-shaped (head_dim 128, GQA 12/4, vocab 32000).
    "llama-0.5b": TinyModel("llama-0.5b", hidden_size=1536, intermediate_size=4096, num_layers=16,
                            num_heads=12, num_kv_heads=4, vocab_size=32000, save_dtype="bf16",
                            provenance="refplan synthetic preset sized like Qwen2.5-0.5B"),
}


def cache_dir() -> Path:
    """Root of refplan's offline artifacts: ``$REFPLAN_CACHE`` or ``~/.cache/refplan``."""
    root = os.environ.get("REFPLAN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "refplan")
    return Path(root)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


# --------------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------------

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def _corpus(seed: int, n_words: int = 3000, n_lines: int = 4000) -> list[str]:
    """Pseudo-words with a Zipf-like frequency, so BPE merges whole words into single tokens."""
    rng = random.Random(seed)
    lexicon = sorted({"".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n_words)})
    weights = [1.0 / (i + 1) for i in range(len(lexicon))]
    return [" ".join(rng.choices(lexicon, weights, k=12)) for _ in range(n_lines)]


def build_tokenizer(vocab_size: int = 1024, out_dir: Path | None = None, seed: int = 0):
    """Train a BPE tokenizer offline with the ``tokenizers`` library and wrap it for transformers.

    Whitespace pre-tokenization and no post-processor: the tokenizer adds no special tokens, so
    TRL's own BOS/EOS handling decides the sequence length.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir or cache_dir() / "tokenizers" / f"bpe{vocab_size}-seed{seed}")
    if (out_dir / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(out_dir))
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.BPEDecoder()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS, UNK], show_progress=False)
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, padding_side="left")
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def single_token_words(tokenizer) -> list[str]:
    """Vocabulary entries that are alphabetic words and encode, alone and in a sentence, to one token."""
    words = []
    for text, idx in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if not text.isalpha() or len(text) < 2:
            continue
        if tokenizer(text, add_special_tokens=False)["input_ids"] == [idx]:
            words.append(text)
    probe = " ".join(words)
    if len(tokenizer(probe, add_special_tokens=False)["input_ids"]) != len(words):
        raise RuntimeError("tokenizer does not split the synthetic vocabulary one token per word")
    return words


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------

def model_config(preset: TinyModel, tokenizer):
    """A transformers config with every dropout set to 0 and the tokenizer's special-token ids."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=max(preset.vocab_size, len(tokenizer)),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_kv_heads,
        max_position_embeddings=preset.max_position_embeddings,
        tie_word_embeddings=preset.tie_word_embeddings,
        attention_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if preset.family == "qwen2":
        return Qwen2Config(**common)
    return LlamaConfig(**common, mlp_bias=False, attention_bias=False)


def build_model(preset: TinyModel | str, seed: int = 0, root: Path | None = None) -> Path:
    """Build (once) and save a random-weight model + its tokenizer; return the directory.

    Weights are saved in ``preset.save_dtype``; the harness loads them in the scenario's dtype.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if isinstance(preset, str):
        preset = PRESETS[preset]
    tag = f"{preset.name}-{_digest([asdict(preset), seed])}"
    out = Path(root or cache_dir() / "models") / tag
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    tokenizer = build_tokenizer(preset.tokenizer_vocab, seed=seed)
    config = model_config(preset, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if preset.save_dtype == "bf16":
        model = model.to(torch.bfloat16)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / "refplan_preset.json").write_text(json.dumps({**asdict(preset), "seed": seed}, indent=1))
    if out.exists():  # another process built it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def resolve_model_dir(model: str) -> Path:
    """``random:<preset>`` -> a built directory; a directory -> itself; a hub id -> its cached snapshot.

    Raises :class:`refplan.errors.PlanError` naming ``--model`` when nothing usable is found offline.
    """
    from refplan.errors import PlanError

    if model.startswith(RANDOM_PREFIX):
        name = model[len(RANDOM_PREFIX):]
        if name not in PRESETS:
            raise PlanError("--model", f"unknown random preset {name!r}; choose from {', '.join(PRESETS)}")
        return build_model(name)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise PlanError("--model", f"{model}: directory has no config.json")
        return path
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model) or model.startswith("."):
        raise PlanError("--model", f"{model}: no such directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:
        raise PlanError("--model", f"{model!r} is neither a directory nor a model in the local Hugging Face "
                                   "cache (nothing is downloaded)") from None


# --------------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------------

def split_lengths(seq: int, added_tokens: int) -> tuple[int, int]:
    """(prompt, completion) word counts so that prompt + completion + added_tokens == seq."""
    body = seq - added_tokens
    if body < 2:
        raise ValueError(f"seq {seq} leaves no room for a prompt and a completion")
    completion = body // 2
    return body - completion, completion


def synthetic_pairs(tokenizer, n_rows: int, prompt_len: int, completion_len: int, seed: int = 0) -> list[dict]:
    """Deterministic prompt/chosen/rejected rows, each exactly ``prompt_len`` / ``completion_len`` tokens.

    Completions start with a space so that ``prompt + completion`` tokenizes as the concatenation.
    """
    words = single_token_words(tokenizer)
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    return [
        {"prompt": text(prompt_len), "chosen": " " + text(completion_len), "rejected": " " + text(completion_len)}
        for _ in range(n_rows)
    ]


def synthetic_unpaired(tokenizer, n_rows: int, prompt_len: int, completion_len: int, seed: int = 0) -> list[dict]:
    """KTO rows (prompt / completion / label) with desirable and undesirable labels interleaved."""
    pairs = synthetic_pairs(tokenizer, (n_rows + 1) // 2, prompt_len, completion_len, seed)
    rows = []
    for p in pairs:
        rows.append({"prompt": p["prompt"], "completion": p["chosen"], "label": True})
        rows.append({"prompt": p["prompt"], "completion": p["rejected"], "label": False})
    return rows[:n_rows]
