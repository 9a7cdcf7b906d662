"""What every text encoder shares: the windows a long text is cut into (:func:`plan_windows`), a text's encoded
form (:class:`EncodedText`, :class:`ChunkTokens`) and the error for local files that cannot be loaded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathmm_pipeline.core.errors import InputError


class EncoderLoadError(InputError):
    """A text encoder's local files are missing or cannot be loaded."""


@dataclass(frozen=True)
class ChunkTokens:
    """Token-level outputs of one window: ids and mask with special tokens, last hidden states (L x D)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    hidden: np.ndarray
    start: int  # offset of the window's first content token in the whole text's tokens


@dataclass(frozen=True)
class EncodedText:
    """One text's embedding, its token count, window weights and (optionally) token-level outputs."""

    embedding: np.ndarray
    n_tokens: int
    window_tokens: list[int]
    chunks: list[ChunkTokens] | None = None


def plan_windows(n_tokens: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) token ranges covering ``n_tokens`` with windows of ``window`` tokens overlapping by ``overlap``.

    A text that fits is one window; otherwise windows advance by ``window - overlap`` and the last one is moved
    back to end exactly at the last token.
    """
    if window <= 0 or not 0 <= overlap < window:
        raise ValueError(f"need window > 0 and 0 <= overlap < window, got window={window}, overlap={overlap}")
    if n_tokens <= window:
        return [(0, n_tokens)]
    stride = window - overlap
    starts = list(range(0, n_tokens - window, stride)) + [n_tokens - window]
    starts = sorted(set(starts))
    return [(s, s + window) for s in starts]
