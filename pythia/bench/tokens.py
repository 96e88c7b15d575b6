"""Prompt token ids synthesised from trace segments: equal segments give equal tokens.

A trace stores prompt content as segments ``(key, offset, tokens)`` of virtual token
streams (see :mod:`pythia.workflow.trace`). A real engine needs token ids. Token ``i`` of
stream ``key`` becomes ``low + mix(key, i) mod (high - low)``, so

- two calls whose prompts share segments send identical token ids there, and the engine's
  prefix cache hits exactly where the original traffic shared content;
- the ids stay inside ``[low, high)``, a range of ordinary tokens of the served model's
  vocabulary (special tokens are avoided).

The outputs of earlier calls are the exception: the engine generated real tokens for them,
and a later call that quotes an earlier output must send those tokens to hit the cache.
:class:`PromptBuilder` substitutes them when they are known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from pythia.errors import PythiaInputError
from pythia.workflow.hashing import mix_array

# Reserved ids at each end of an ordinary vocabulary (byte tokens and specials at the start,
# chat/control tokens at the end in Llama-3-style vocabularies).
DEFAULT_LOW = 256
DEFAULT_TAIL = 1024


@dataclass(frozen=True)
class TokenSpace:
    """The range of token ids prompts are drawn from: ``low <= id < high``."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high:
            raise PythiaInputError(f"token range [{self.low}, {self.high}) is empty")

    @classmethod
    def for_model(cls, model_dir: str | Path) -> "TokenSpace":
        """The range for a local model folder: the tiny model's stamp, else its ``config.json``."""
        d = Path(model_dir)
        stamp = d / "pythia-tiny-model.json"
        if stamp.is_file():
            info = json.loads(stamp.read_text())
            return cls(int(info["first_regular_token_id"]), int(info["vocab_size"]))
        cfg = d / "config.json"
        if not cfg.is_file():
            raise PythiaInputError(f"{d}: no config.json; give the vocabulary range with --vocab-size")
        vocab = json.loads(cfg.read_text()).get("vocab_size")
        if not isinstance(vocab, int) or vocab <= DEFAULT_LOW + DEFAULT_TAIL:
            raise PythiaInputError(f"{cfg}: field vocab_size is missing or too small for prompt synthesis")
        return cls(DEFAULT_LOW, vocab - DEFAULT_TAIL)

    def ids(self, key: int, offset: int, n: int) -> np.ndarray:
        """Token ids of tokens ``offset .. offset+n`` of stream ``key``."""
        if n <= 0:
            return np.empty(0, dtype=np.int64)
        pos = np.arange(offset, offset + n, dtype=np.int64)
        return self.low + mix_array(int(key), pos) % (self.high - self.low)


class PromptBuilder:
    """Builds a call's prompt ids from its segments, using realised output tokens when known.

    ``realised[key]`` holds the tokens an engine actually generated for the output stream
    ``key`` (an earlier call of the same job); a segment of that stream is taken from there,
    and synthesised past its end (a trace may quote more than the engine produced).
    """

    def __init__(self, space: TokenSpace) -> None:
        self.space = space
        self.realised: dict[int, list[int]] = {}

    def record_output(self, key: int, token_ids: Iterable[int]) -> None:
        """Remember what the engine generated for output stream ``key``."""
        self.realised[int(key)] = list(token_ids)

    def forget(self, keys: Iterable[int]) -> None:
        """Drop realised outputs no later call can quote (a finished job's)."""
        for k in keys:
            self.realised.pop(int(k), None)

    def prompt(self, segs: np.ndarray) -> list[int]:
        """The token ids of a prompt (``segs`` an array of ``[key, offset, tokens]`` rows)."""
        parts: list[np.ndarray] = []
        for key, offset, n in np.asarray(segs, dtype=np.int64).reshape(-1, 3):
            key, offset, n = int(key), int(offset), int(n)
            real = self.realised.get(key)
            if real is not None and offset < len(real):
                take = real[offset:offset + n]
                parts.append(np.asarray(take, dtype=np.int64))
                if len(take) < n:
                    parts.append(self.space.ids(key, offset + len(take), n - len(take)))
            else:
                parts.append(self.space.ids(key, offset, n))
        if not parts:
            return []
        return np.concatenate(parts).tolist()
