"""Score any de-identifier on a corpus whose identifiers and must-keep clinical terms are annotated by offset.

A report is anything with ``text``, ``identifiers`` (``(category, start, end, value)``) and ``clinical``
(``(start, end, term)``), offsets into ``text`` with ``text[start:end] == value``. The de-identifier is a
function of the text returning :class:`~pathmm_pipeline.reports.deid.DeidResult` (or any object with
``.spans``, or the spans themselves); a span is anything with ``start`` and ``end`` offsets into the *input*
text. Other tools are scored through a small adapter that returns such spans.

Conventions (what the numbers mean):

* An identifier is **removed** when every one of its significant tokens is covered by the union of the returned
  spans. Tokens are runs of letters and digits; significant ones have two or more characters or are digits
  (a lone initial "J." is not counted). Uncovered whitespace and punctuation do not count.
* It is a **partial** leak when some of its letters or digits are covered but it is not removed ("John" left
  of "John Smith"); **missed** when none is covered. Recall = removed / planted, per category.
* A clinical term is **falsely removed** when any of its characters is covered by a returned span.
* The span's type is not checked: a name tagged ``[DATE]`` still counts as removed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pandas as pd

#: the HIPAA Safe Harbor identifier categories that can occur in a pathology report, in table order
SAFE_HARBOR_CATEGORIES: tuple[str, ...] = (
    "NAME", "DATE", "AGE_OVER_89", "PHONE", "FAX", "SSN", "MRN", "ACCESSION", "HEALTH_PLAN", "ACCOUNT", "DEVICE",
    "LICENSE", "EMAIL", "URL", "IP", "ADDRESS", "CITY", "STATE", "ZIP", "INSTITUTION")

_TOKEN = re.compile(r"[^\W_]+")


class AnnotatedReport(Protocol):
    """A report text with its planted identifiers and the clinical terms that must survive."""

    @property
    def text(self) -> str: ...

    @property
    def identifiers(self) -> Sequence[tuple[str, int, int, str]]: ...

    @property
    def clinical(self) -> Sequence[tuple[int, int, str]]: ...


@dataclass(frozen=True)
class Leak:
    """An identifier that was not fully removed: what survived of it (its uncovered significant tokens)."""

    report: int
    category: str
    value: str
    surviving: tuple[str, ...]
    partial: bool


@dataclass(frozen=True)
class CategoryScore:
    """Counts of one identifier category."""

    planted: int = 0
    removed: int = 0
    partial: int = 0

    @property
    def recall(self) -> float:
        """Fraction of planted identifiers fully removed (nan when none was planted)."""
        return self.removed / self.planted if self.planted else float("nan")


@dataclass(frozen=True)
class DeidScore:
    """Recall per category, the leaks behind it, and the clinical terms removed by mistake."""

    categories: dict[str, CategoryScore]
    clinical_total: int
    leaks: list[Leak] = field(default_factory=list)
    false_removals: list[tuple[int, str]] = field(default_factory=list)

    @property
    def false_removal_rate(self) -> float:
        """Fraction of must-keep clinical terms touched by a removed span (nan when there are none)."""
        return len(self.false_removals) / self.clinical_total if self.clinical_total else float("nan")

    @property
    def overall(self) -> CategoryScore:
        """Counts summed over every category."""
        cats = self.categories.values()
        return CategoryScore(sum(c.planted for c in cats), sum(c.removed for c in cats), sum(c.partial for c in cats))

    def table(self) -> pd.DataFrame:
        """One row per category (Safe Harbor order, then others by name) and a last row ``ALL``: columns
        category, planted, removed, recall, partial."""
        import pandas as pd

        order = [c for c in SAFE_HARBOR_CATEGORIES if c in self.categories]
        order += sorted(set(self.categories) - set(order))
        rows = [(name, self.categories[name]) for name in order] + [("ALL", self.overall)]
        return pd.DataFrame([{"category": name, "planted": c.planted, "removed": c.removed, "recall": c.recall,
                              "partial": c.partial} for name, c in rows])


def _spans_of(output: Any) -> list[tuple[int, int]]:
    spans = getattr(output, "spans", output)
    return [(int(s.start), int(s.end)) for s in spans]


def _significant(value: str, offset: int) -> list[tuple[int, int]]:
    tokens = [(offset + m.start(), offset + m.end(), m.group()) for m in _TOKEN.finditer(value)]
    keep = [(s, e) for s, e, tok in tokens if len(tok) >= 2 or tok.isdigit()]
    return keep or [(s, e) for s, e, _ in tokens]


def score_deid(reports: Iterable[AnnotatedReport], deidentify_fn: Callable[[str], Any]) -> DeidScore:
    """Run ``deidentify_fn`` on every report's text and score its spans against the annotations.

    Raises ``ValueError`` when an annotation's offsets do not hold its value, or a returned span lies outside the
    text: both would make the numbers meaningless.
    """
    counts: dict[str, list[int]] = {}
    leaks: list[Leak] = []
    false_removals: list[tuple[int, str]] = []
    clinical_total = 0
    for index, report in enumerate(reports):
        text = report.text
        for category, start, end, value in report.identifiers:
            if text[start:end] != value:
                raise ValueError(f"report {index}: identifier {category} {value!r} is not at [{start}, {end}) "
                                 f"(found {text[start:end]!r}); fix the annotation offsets")
        for start, end, term in report.clinical:
            if text[start:end] != term:
                raise ValueError(f"report {index}: clinical term {term!r} is not at [{start}, {end}) "
                                 f"(found {text[start:end]!r}); fix the annotation offsets")
        covered = bytearray(len(text))
        for start, end in _spans_of(deidentify_fn(text)):
            if not 0 <= start <= end <= len(text):
                raise ValueError(f"report {index}: the de-identifier returned span [{start}, {end}) outside the "
                                 f"text of {len(text)} characters; its offsets must refer to the input text")
            covered[start:end] = b"\x01" * (end - start)
        for category, start, _end, value in report.identifiers:
            row = counts.setdefault(category, [0, 0, 0])
            row[0] += 1
            tokens = _significant(value, start)
            surviving = tuple(text[s:e] for s, e in tokens if not all(covered[s:e]))
            if not surviving:
                row[1] += 1
                continue
            partial = any(covered[s:e].count(1) for s, e in tokens)
            row[2] += int(partial)
            leaks.append(Leak(index, category, value, surviving, partial))
        for start, end, term in report.clinical:
            clinical_total += 1
            if any(covered[start:end]):
                false_removals.append((index, term))
    categories = {name: CategoryScore(*row) for name, row in counts.items()}
    return DeidScore(categories, clinical_total, leaks, false_removals)
