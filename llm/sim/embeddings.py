"""Deterministic embeddings of the simulated provider."""

from __future__ import annotations

import math
import zlib

from llm.sim.text import STOPWORDS, raw_words, stem_word

# ---------------------------------------------------------------------------------------------
# Embeddings


def simulate_embeddings(model: str, texts: list[str], dim: int = 256) -> list[list[float]]:
    """Deterministic hashed bag-of-words (+ character trigram) vectors, L2-normalised.

    Cosine similarity between two vectors grows with the words (and word pieces) the texts
    share, which is what retrieval tests need. `model` does not change the vectors: every
    simulated embedding model shares one space.
    """
    if dim < 1:
        raise ValueError("dim must be positive")
    return [_embed(text, dim) for text in texts]


def _embed(text: str, dim: int) -> list[float]:
    vector = [0.0] * dim
    words = [w for w in raw_words(text) if w not in STOPWORDS] or raw_words(text)
    for word in words:
        h = zlib.crc32(b"w:" + stem_word(word).encode())
        vector[h % dim] += 1.0 if h & 0x80000000 else -1.0
        padded = f"<{word}>"
        for i in range(len(padded) - 2):
            g = zlib.crc32(padded[i : i + 3].encode())
            vector[g % dim] += 0.25 if g & 0x80000000 else -0.25
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:
        vector[zlib.crc32(text.encode()) % dim] = 1.0  # empty text: a fixed unit vector, never NaN
        return vector
    return [v / norm for v in vector]
