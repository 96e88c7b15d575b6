"""A tiny random Llama and a locally trained byte-level BPE tokenizer: a real model with no download.

The engine tests and CPU runs need a model that vLLM loads like any Hugging Face checkpoint
but that costs nothing to fetch. :func:`make_tiny_model` writes one in a few seconds:

- a byte-level BPE tokenizer trained with ``tokenizers`` on text generated from a seeded
  generator, saved as a ``PreTrainedTokenizerFast`` with a minimal chat template;
- a ``LlamaForCausalLM`` with random weights (2 layers, hidden size 128, head size 64, which
  vLLM's CPU attention supports), its vocabulary exactly the tokenizer's, saved with
  ``save_pretrained`` as safetensors.

The output is a function of the parameters and the seed alone. What the model generates is
noise: tests assert on counters and timings, never on text.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pythia.errors import PythiaInputError

# Bump when the files written change, so cached copies are regenerated.
GENERATOR_VERSION = 1
SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
STAMP = "pythia-tiny-model.json"


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny model.

    Attributes:
        vocab_size: target tokenizer vocabulary (BPE may stop a little short; the model's
            vocabulary is set to the tokenizer's actual size).
        hidden_size: model width; ``hidden_size / num_attention_heads`` must be a head size
            vLLM's CPU attention supports (32, 64, 80, 96, 112, 128, ...).
        intermediate_size: MLP width.
        num_hidden_layers: decoder layers.
        num_attention_heads / num_key_value_heads: attention heads (grouped-query when fewer
            key/value heads).
        max_position_embeddings: context length the engine may use.
        seed: seed of the training text and of the weights.
    """

    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if self.vocab_size < 512:
            raise PythiaInputError(f"tiny model vocab_size={self.vocab_size} must be at least 512")
        if self.hidden_size % self.num_attention_heads:
            raise PythiaInputError(
                f"tiny model hidden_size={self.hidden_size} must be a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise PythiaInputError("tiny model num_attention_heads must be a multiple of num_key_value_heads")
        if self.head_size not in (32, 64, 80, 96, 112, 128, 160, 192, 224, 256):
            raise PythiaInputError(
                f"tiny model head size {self.head_size} (hidden_size / num_attention_heads) is not "
                "one vLLM's CPU attention supports; use 32, 64, 80, 96, 112 or 128"
            )

    @property
    def head_size(self) -> int:
        """Per-head width."""
        return self.hidden_size // self.num_attention_heads


def _training_text(seed: int, lines: int = 4000) -> list[str]:
    """Pseudo-English text: words built from syllables, so BPE finds many merges."""
    rng = np.random.default_rng([seed, 0x70C])
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
              "st", "tr", "pl", "gr", "ch", "sh", "th", "qu"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "ck", "st"]
    words = []
    for _ in range(3000):
        n = int(rng.integers(1, 4))
        words.append("".join(
            onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))] + codas[rng.integers(len(codas))]
            for _ in range(n)
        ))
    # Zipf-like word frequencies, as in natural text.
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    punct = [".", ",", "?", "!", ":", ";"]
    out = []
    for _ in range(lines):
        k = int(rng.integers(4, 16))
        idx = rng.choice(len(words), size=k, p=weights)
        line = " ".join(words[i] for i in idx)
        out.append(line.capitalize() + punct[rng.integers(len(punct))] + f" {int(rng.integers(0, 10_000))}")
    return out


def _train_tokenizer(spec: TinyModelSpec, out: Path):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(spec.seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=spec.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def _write_model(spec: TinyModelSpec, vocab: int, eos_id: int, out: Path) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    # A private RNG stream: weights depend on the seed only, and the caller's global
    # torch RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def is_tiny_model(path: Path) -> bool:
    """True when ``path`` holds a complete tiny model written by this generator version."""
    stamp = Path(path) / STAMP
    try:
        return json.loads(stamp.read_text()).get("generator_version") == GENERATOR_VERSION
    except (OSError, ValueError):
        return False


def make_tiny_model(out: str | Path, spec: TinyModelSpec | None = None, *, force: bool = False) -> Path:
    """Write the tiny model and tokenizer to ``out`` (reused when already there); returns ``out``.

    The files are written to a temporary folder beside ``out`` and moved in place at the end,
    so a half-written model never sits under the real name.
    """
    spec = spec or TinyModelSpec()
    out = Path(out)
    if not force and is_tiny_model(out):
        stamp = json.loads((out / STAMP).read_text())
        if stamp.get("spec") == asdict(spec):
            return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-model-", dir=out.parent))
    try:
        fast = _train_tokenizer(spec, tmp)
        vocab = len(fast)
        eos_id = fast.convert_tokens_to_ids("<|endoftext|>")
        params = _write_model(spec, vocab, eos_id, tmp)
        first_regular = max(fast.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS) + 1
        stamp = {
            "generator_version": GENERATOR_VERSION,
            "spec": asdict(spec),
            "vocab_size": vocab,
            "first_regular_token_id": first_regular,
            "parameters": params,
        }
        (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def tiny_model_info(path: str | Path) -> dict:
    """The stamp of a tiny model folder: vocabulary size, first regular token id, parameters."""
    path = Path(path)
    if not is_tiny_model(path):
        raise PythiaInputError(f"{path}: not a tiny model folder (no {STAMP}); run `pythia serve tiny-model --out {path}`")
    return json.loads((path / STAMP).read_text())


def default_cache_dir() -> Path:
    """Where ``pythia run`` keeps the generated tiny model: ``$XDG_CACHE_HOME/pythia`` or ``~/.cache/pythia``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pythia" / f"tiny-llama-v{GENERATOR_VERSION}"
