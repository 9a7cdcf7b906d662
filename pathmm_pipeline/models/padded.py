"""Padded batches of variable-length bags, for the models whose forward takes several patients at once
(:meth:`~pathmm_pipeline.models.base.PathmmModel.forward_batch`).

* :func:`pad_sequences` -- k tensors (n_i, C) -> (k, max n_i, C) zero-padded, and the (k, max n_i) mask (True at
  real rows).
* :func:`rowwise` -- apply a row-wise module (Linear, MLP) to k bags in one call: concatenated, then split back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def pad_sequences(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(padded (k, L, C), mask (k, L) bool)``, L the longest sequence; padded rows are zero."""
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence")
    lengths = torch.tensor([int(s.shape[0]) for s in seqs], device=seqs[0].device)
    padded = torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True)
    mask = torch.arange(padded.shape[1], device=padded.device)[None] < lengths[:, None]
    return padded, mask


def rowwise(module: Callable[[torch.Tensor], torch.Tensor], bags: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``module`` applied to every row of every bag in one call (for modules that treat rows independently)."""
    sizes = [int(b.shape[0]) for b in bags]
    return list(torch.split(module(torch.cat(list(bags))), sizes))
