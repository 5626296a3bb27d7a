"""Deterministic hashed bag-of-words embeddings: real vectors without a model. No I/O."""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable
from functools import lru_cache

DEFAULT_DIM = 64
_WORD = re.compile(r"[a-z0-9]+")


@lru_cache(maxsize=65536)
def _slot(word: str, dim: int) -> tuple[int, float]:
    h = zlib.crc32(word.encode())
    return h % dim, 1.0 if (h >> 16) & 1 else -1.0


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def embed_tokens(words: Iterable[str], dim: int = DEFAULT_DIM) -> list[float]:
    """The L2-normalised signed count vector of the words' hash buckets."""
    vec = [0.0] * dim
    for word in words:
        i, sign = _slot(word, dim)
        vec[i] += sign
    norm = math.sqrt(sum(v * v for v in vec))
    if norm == 0:
        return vec
    return [v / norm for v in vec]


def embed_text(text: str, dim: int = DEFAULT_DIM) -> list[float]:
    """Embed a text the way the seeded pipeline did: same text, same vector."""
    return embed_tokens(tokens(text), dim)


def vector_literal(vec: list[float]) -> str:
    """pgvector's text form, with zeros kept short (bag-of-words vectors are sparse)."""
    return "[" + ",".join("0" if v == 0 else f"{v:.6g}" for v in vec) + "]"


def array_literal(vec: list[float]) -> str:
    """PostgreSQL real[] text form, for servers without pgvector."""
    return "{" + ",".join("0" if v == 0 else f"{v:.6g}" for v in vec) + "}"
