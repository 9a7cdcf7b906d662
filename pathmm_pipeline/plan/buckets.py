"""Stable buckets of slides for extraction jobs that each run many slides (``features.slides_per_job``).

A slide's bucket is a prefix of the bits of the SHA-256 of its id: the shortest prefix that no more than
``slides_per_job`` of the cohort's slides share (a binary trie cut where it fits). Buckets depend on the slide ids
alone, never on their order or on the other slides' buckets: adding a slide changes only the bucket it falls
into (which splits in two when it overflows), removing one changes only its own (or merges it with its
sibling), and every other bucket, and so every other extraction job, stays as it was. Torch-free: the Snakefile
calls it at parse time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pathmm_pipeline.core.errors import ConfigError

#: the bucket of a cohort that fits in one job
WHOLE = "all"


def _bits(slide_id: str) -> str:
    digest = hashlib.sha256(slide_id.encode()).digest()
    return "".join(f"{byte:08b}" for byte in digest)


def slide_buckets(slide_ids: Iterable[str], slides_per_job: int) -> dict[str, tuple[str, ...]]:
    """Bucket name -> its slides (sorted), each bucket at most ``slides_per_job`` slides. Names are ``all``
    (the whole cohort fits) or ``b`` and the bits of the shared hash prefix, e.g. ``b0110``."""
    if slides_per_job < 1:
        raise ConfigError(f"features.slides_per_job must be >= 1, got {slides_per_job}")
    keyed = sorted((_bits(s), s) for s in set(slide_ids))
    buckets: dict[str, tuple[str, ...]] = {}

    def cut(items: list[tuple[str, str]], depth: int) -> None:
        if not items:
            return
        if len(items) <= slides_per_job or depth == 256:
            name = f"b{items[0][0][:depth]}" if depth else WHOLE
            buckets[name] = tuple(sorted(s for _, s in items))
            return
        zeros = [item for item in items if item[0][depth] == "0"]
        cut(zeros, depth + 1)
        cut(items[len(zeros):], depth + 1)  # sorted by bits: the ones follow the zeros

    cut(keyed, 0)
    return buckets
