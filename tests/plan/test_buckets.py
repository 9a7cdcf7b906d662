"""Stable buckets of slides for many-slides-per-job extraction: sizes, order independence, and that adding or
removing one slide changes only the bucket it falls into."""

from __future__ import annotations

import random

import pytest

from pathmm_pipeline.core.errors import ConfigError
from pathmm_pipeline.plan.buckets import WHOLE, slide_buckets

IDS = [f"TCGA-{i:04d}-01Z-00-DX1" for i in range(300)]


def _bucket_of(buckets: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {s: name for name, slides in buckets.items() for s in slides}


@pytest.mark.parametrize("per_job", [1, 3, 16, 64])
def test_buckets_cover_every_slide_once_within_the_size_and_ignore_order(per_job):
    buckets = slide_buckets(IDS, per_job)
    assert sorted(s for slides in buckets.values() for s in slides) == sorted(IDS)
    assert max(len(b) for b in buckets.values()) <= per_job
    shuffled = IDS[:]
    random.Random(0).shuffle(shuffled)
    assert slide_buckets(shuffled, per_job) == buckets
    if per_job >= 16:  # a binary trie fills its buckets to about ln 2 of the size on average
        assert len(IDS) / len(buckets) > 0.45 * per_job
    assert slide_buckets(IDS[:per_job], per_job) == {WHOLE: tuple(sorted(IDS[:per_job]))}


@pytest.mark.parametrize("per_job", [4, 16])
def test_adding_or_removing_a_slide_changes_only_its_own_bucket(per_job):
    before = slide_buckets(IDS, per_job)
    of = _bucket_of(before)
    for new in (f"NEW-{i}" for i in range(40)):
        after = slide_buckets(IDS + [new], per_job)
        changed = set(after.items()) ^ set(before.items())
        moved = {s for _, slides in changed for s in slides} - {new}
        # the slides whose bucket changed all come from one bucket: the one the new slide fell into (split
        # in two when it overflowed)
        assert len({of[s] for s in moved}) <= 1, (new, moved)
        assert len(moved) <= per_job
    gone = IDS[7]
    after = slide_buckets([s for s in IDS if s != gone], per_job)
    changed = {s for _, slides in set(after.items()) ^ set(before.items()) for s in slides} - {gone}
    assert len(changed) <= 2 * per_job  # its own bucket, merged with its sibling at most
    assert of[gone] in {of[s] for s in changed} or not changed


def test_a_bucket_size_below_one_is_refused():
    with pytest.raises(ConfigError, match="slides_per_job"):
        slide_buckets(IDS, 0)
