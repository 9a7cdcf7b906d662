"""Patients forwarded together: the accumulation window cut into padded batches (``training.settings.batch_tiles``).

A window's patients are sorted by bag size and taken greedily into batches whose padded size (patients x the
largest bag among them) stays within ``batch_tiles`` -- bucketing by bag size, so that little of a batch is
padding; a patient whose bag alone exceeds it is a batch of its own. Models that can pad
(:attr:`~pathmm_pipeline.models.base.PathmmModel.batched`) run each batch as one forward pass; the others loop.
The window's loss and gradient are those of the one-patient loop (each patient's loss divided by the window's
size), to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

from pathmm_pipeline.models import PatientInput


def bag_size(x: PatientInput) -> int:
    """The rows a patient adds to a padded batch: its tiles (1 without a slide)."""
    return 1 if x.wsi is None else int(x.wsi.reshape(-1, x.wsi.shape[-1]).shape[0])


def padded_batches(sizes: Sequence[int], max_tiles: int) -> list[list[int]]:
    """The positions of ``sizes`` grouped into batches, by increasing size, each with ``len x largest <=
    max_tiles`` (or a single patient). Every position appears exactly once."""
    if max_tiles < 1:
        raise ValueError(f"batch_tiles must be >= 1, got {max_tiles}")
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda j: (sizes[j], j)):
        if current and (len(current) + 1) * sizes[i] > max_tiles:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
