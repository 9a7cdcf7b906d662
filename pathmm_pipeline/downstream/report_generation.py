"""Report generation from a fused patient embedding (the ALTER downstream task), with a retrieval baseline.

Holds :class:`ReportTokenizer` (MiniLM WordPiece, restricted vocabulary), :class:`ReportDecoder` (a transformer
decoder conditioned on the embedding through memory tokens), :func:`train_report_decoder`,
:func:`generate_reports` (greedy), :func:`nearest_report_baseline` and :func:`evaluate_generation` (BLEU,
METEOR, ROUGE-L against the held-out patients' cleaned reports).
Paper: ALTER, Sun et al., arXiv 2505.12711.
Paper-to-code mapping and deviations: docs/methods/alter.md
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pathmm_pipeline.downstream.settings import GenerationConfig
from pathmm_pipeline.reports.deid import PHI_TYPES
from pathmm_pipeline.training.engine import Engine, linear_warmup_cosine, run_on

if TYPE_CHECKING:  # pragma: no cover
    pass

log = logging.getLogger(__name__)

ArrayLike = Any  # np.ndarray | torch.Tensor | nested sequences of floats


# --------------------------------------------------------------------------------------------- tokenizer
@lru_cache(maxsize=4)
def _load_hf_tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


_PHI_TAG_RE = re.compile(r"\[\s*(" + "|".join(t.lower() for t in PHI_TYPES) + r")\s*\]", re.IGNORECASE)
_SPACE_BEFORE_RE = re.compile(r"\s+([.,;:!?%)\]])")
_SPACE_AFTER_RE = re.compile(r"([(\[])\s+")
_DECIMAL_RE = re.compile(r"(?<=\d)\.\s+(?=\d)")
_JOINER_RE = re.compile(r"(?<=\w)\s+([-/])\s+(?=\w)")


def tidy_decoded(text: str) -> str:
    """Re-attach punctuation in WordPiece-decoded text; only spaces next to punctuation change."""
    text = _PHI_TAG_RE.sub(lambda m: f"[{m.group(1).upper()}]", text)
    text = _SPACE_AFTER_RE.sub(r"\1", text)
    text = _SPACE_BEFORE_RE.sub(r"\1", text)
    text = _DECIMAL_RE.sub(".", text)
    text = _JOINER_RE.sub(r"\1", text)
    return " ".join(text.split())


class ReportTokenizer:
    """MiniLM WordPiece tokens for reports: BOS/EOS = [CLS]/[SEP], PAD = [PAD], optional restricted vocabulary.

    ``vocab_ids`` (WordPiece ids, specials first) defines the model's local vocabulary: local id ``i`` is
    WordPiece id ``vocab_ids[i]``; ``None`` means the full WordPiece vocabulary (local id = WordPiece id).
    """

    def __init__(self, hf_tokenizer: Any | None = None, vocab_ids: Sequence[int] | None = None,
                 model_dir: str | Path | None = None) -> None:
        if hf_tokenizer is None:
            if model_dir is None:
                from pathmm_pipeline.encoders.text import minilm_model_dir

                model_dir = minilm_model_dir()
            hf_tokenizer = _load_hf_tokenizer(str(model_dir))
        self.hf = hf_tokenizer
        self.bos_id = int(hf_tokenizer.cls_token_id)
        self.eos_id = int(hf_tokenizer.sep_token_id)
        self.pad_id = int(hf_tokenizer.pad_token_id)
        self.unk_id = int(hf_tokenizer.unk_token_id)
        self.specials = (self.pad_id, self.unk_id, self.bos_id, self.eos_id)
        self.vocab_ids: list[int] | None = None
        self._to_local: dict[int, int] = {}
        if vocab_ids is not None:
            ids = [int(i) for i in vocab_ids]
            if ids[:4] != list(self.specials) or len(set(ids)) != len(ids):
                raise ValueError("vocab_ids must start with the PAD, UNK, BOS, EOS ids and hold no duplicate")
            self.vocab_ids = ids
            self._to_local = {g: i for i, g in enumerate(ids)}

    # ---------------------------------------------------------------- vocabulary
    @property
    def restricted(self) -> bool:
        return self.vocab_ids is not None

    @property
    def vocab_size(self) -> int:
        """Width of the model's softmax (the local vocabulary)."""
        return len(self.vocab_ids) if self.vocab_ids is not None else int(len(self.hf))

    def restrict(self, sequences: Sequence[Sequence[int]]) -> ReportTokenizer:
        """A tokenizer whose local vocabulary is the specials plus the WordPiece ids occurring in ``sequences``."""
        seen = sorted({int(i) for seq in sequences for i in seq} - set(self.specials))
        return ReportTokenizer(self.hf, [*self.specials, *seen])

    def to_local(self, ids: Sequence[int]) -> list[int]:
        """WordPiece ids -> local ids (ids outside a restricted vocabulary become UNK)."""
        if self.vocab_ids is None:
            return [int(i) for i in ids]
        unk = self._to_local[self.unk_id]
        return [self._to_local.get(int(i), unk) for i in ids]

    def to_global(self, ids: Sequence[int]) -> list[int]:
        """Local ids -> WordPiece ids."""
        if self.vocab_ids is None:
            return [int(i) for i in ids]
        return [self.vocab_ids[int(i)] for i in ids]

    def local(self, wordpiece_id: int) -> int:
        """The local id of one WordPiece id (a special token's local id, typically)."""
        return self.to_local([wordpiece_id])[0]

    # ---------------------------------------------------------------- text
    def encode(self, text: str, max_len: int = 256) -> list[int]:
        """``[CLS] content [SEP]`` as WordPiece ids, content truncated to ``max_len - 2`` tokens."""
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3, got {max_len}")
        content = self.hf(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [self.bos_id, *[int(i) for i in content[:max_len - 2]], self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of WordPiece ids: stops at the first EOS after the content, drops specials, tidies punctuation."""
        ids = [int(i) for i in ids]
        if ids and ids[0] == self.bos_id:
            ids = ids[1:]
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        ids = [i for i in ids if i not in self.specials]
        return tidy_decoded(self.hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True))

    def describe(self) -> dict[str, Any]:
        return {"tokenizer": type(self.hf).__name__, "name_or_path": str(getattr(self.hf, "name_or_path", "")),
                "wordpiece_vocab": int(len(self.hf)), "restricted": self.restricted, "vocab_size": self.vocab_size,
                "bos": "[CLS]", "eos": "[SEP]", "pad": "[PAD]"}


# ------------------------------------------------------------------------------------------------- model
class ReportDecoder(nn.Module):
    """Transformer decoder conditioned on a fused embedding through ``n_prefix`` memory tokens."""

    def __init__(self, embed_dim: int, tokenizer: ReportTokenizer, config: GenerationConfig | None = None) -> None:
        super().__init__()
        config = config or GenerationConfig()
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        self.config = config
        self.tokenizer = tokenizer
        self.embed_dim = int(embed_dim)
        d, vocab = config.d_model, tokenizer.vocab_size
        self.pad_local = tokenizer.local(tokenizer.pad_id)
        self.bos_local = tokenizer.local(tokenizer.bos_id)
        self.eos_local = tokenizer.local(tokenizer.eos_id)
        self.unk_local = tokenizer.local(tokenizer.unk_id)
        self.register_buffer("feature_mean", torch.zeros(embed_dim))
        self.register_buffer("feature_scale", torch.ones(embed_dim))
        self.register_buffer("vocab_ids", torch.tensor(tokenizer.vocab_ids if tokenizer.restricted
                                                       else [], dtype=torch.long))
        self.prefix = nn.Linear(embed_dim, config.n_prefix * d)
        self.prefix_pos = nn.Parameter(torch.randn(config.n_prefix, d) * 0.02)
        self.memory_norm = nn.LayerNorm(d)
        self.token_embedding = nn.Embedding(vocab, d, padding_idx=self.pad_local)
        self.position_embedding = nn.Embedding(config.max_len, d)
        layer = nn.TransformerDecoderLayer(d, config.n_heads, config.ff_dim, config.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, config.n_layers)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.dropout = nn.Dropout(config.dropout)
        self.history: list[dict[str, float]] = []

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def set_feature_stats(self, embeddings: torch.Tensor) -> None:
        """Standardise inputs with these (training) embeddings' per-feature mean and standard deviation."""
        mean = embeddings.mean(0)
        std = embeddings.std(0, unbiased=False) if embeddings.shape[0] > 1 else torch.ones_like(mean)
        self.feature_mean.copy_(mean)
        self.feature_scale.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def memory(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, E) embeddings -> (B, n_prefix, d_model) memory tokens."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(f"expected embeddings of shape (B, {self.embed_dim}), got {tuple(embeddings.shape)}")
        x = (embeddings - self.feature_mean) / self.feature_scale
        m = self.prefix(x).view(x.shape[0], self.config.n_prefix, self.config.d_model) + self.prefix_pos
        return self.memory_norm(m)

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor,
                memory: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, L, V) for local token ids (B, L) under a causal mask."""
        length = tokens.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"{length} tokens exceed max_len {self.config.max_len}")
        if memory is None:
            memory = self.memory(embeddings)
        positions = torch.arange(length, device=tokens.device)
        h = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=tokens.device), diagonal=1)
        padding = tokens == self.pad_local
        out = self.decoder(h, memory, tgt_mask=causal, tgt_is_causal=True, tgt_key_padding_mask=padding)
        return self.head(self.norm(out))

    def loss(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced mean cross-entropy of every next token after BOS (padding ignored)."""
        logits = self(embeddings, tokens[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1),
                                           ignore_index=self.pad_local)

    @torch.no_grad()
    def greedy(self, embeddings: torch.Tensor, max_len: int | None = None) -> list[list[int]]:
        """Greedy decoding: per row, the local content ids generated after BOS, up to (excluding) EOS."""
        max_len = min(int(max_len or self.config.max_len), self.config.max_len)
        n = embeddings.shape[0]
        memory = self.memory(embeddings)
        seq = torch.full((n, 1), self.bos_local, dtype=torch.long, device=embeddings.device)
        done = torch.zeros(n, dtype=torch.bool, device=embeddings.device)
        banned = torch.tensor(sorted({self.pad_local, self.bos_local, self.unk_local}), device=embeddings.device)
        while seq.shape[1] < max_len and not bool(done.all()):
            logits = self(embeddings, seq, memory=memory)[:, -1]
            logits[:, banned] = -math.inf
            nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_local), nxt)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            done |= nxt == self.eos_local
        rows = []
        for row in seq[:, 1:].tolist():
            content = []
            for token in row:
                if token in (self.eos_local, self.pad_local):
                    break
                content.append(token)
            rows.append(content)
        return rows


# ------------------------------------------------------------------------------------------------ inputs
def _as_matrix(embeddings: ArrayLike, name: str = "embeddings") -> np.ndarray:
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    try:
        x = np.asarray(embeddings, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric (N, E) array: {exc}") from exc
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, E) array, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: no patient")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has width 0")
    if not np.isfinite(x).all():
        bad = np.where(~np.isfinite(x).all(1))[0]
        raise ValueError(f"{name} has NaN or infinite values in {bad.size} row(s), first {bad[:5].tolist()}")
    return x


def _check_texts(texts: Sequence[str], n: int, name: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"{name} must be a list of strings, not a single string")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{name} is empty: need one report text per patient")
    if len(texts) != n:
        raise ValueError(f"{len(texts)} {name} for {n} embeddings; need exactly one text per embedding row")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"{name} {bad[:10]} are empty or not strings ({len(bad)} in all)")
    return texts


def _pad(rows: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


# --------------------------------------------------------------------------------------------- training
def train_report_decoder(embeddings: ArrayLike, texts: Sequence[str],
                         config: GenerationConfig | None = None,
                         tokenizer: ReportTokenizer | None = None) -> ReportDecoder:
    """Train a :class:`ReportDecoder` on (N, E) embeddings and their N report texts; returns it in eval mode.

    ``tokenizer`` defaults to the MiniLM WordPiece tokenizer (restricted to the training tokens when
    ``config.restrict_vocab``). The per-epoch mean loss is kept in ``decoder.history``.
    """
    from tqdm import tqdm

    config = config or GenerationConfig()
    x = _as_matrix(embeddings)
    texts = _check_texts(texts, x.shape[0])
    base = tokenizer or ReportTokenizer()
    sequences = [base.encode(t, config.max_len) for t in texts]
    empty = [i for i, s in enumerate(sequences) if len(s) <= 2]
    if empty:
        raise ValueError(f"texts {empty[:10]} have no token after tokenisation")
    tok = base.restrict(sequences) if config.restrict_vocab and not base.restricted else base
    local = [tok.to_local(s) for s in sequences]
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = int(config.warmup_fraction * total)
    start = time.perf_counter()
    # the caller's RNG restored afterwards, cuDNN deterministic (torch's deterministic algorithms stay as they are)
    with run_on(config.device, deterministic=True, threads=None, seed=config.seed, algorithms=False) as device:
        model = ReportDecoder(x.shape[1], tok, config)
        features = torch.from_numpy(x)
        if config.standardize:
            model.set_feature_stats(features)
        model.to(device)
        features = features.to(device)
        engine = Engine(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                        schedule=linear_warmup_cosine(total, warmup), max_grad_norm=config.grad_clip or None,
                        device=device)
        order_rng = torch.Generator().manual_seed(config.seed)
        n_params = sum(p.numel() for p in model.parameters())
        log.info("report decoder: %d patients, embedding width %d, vocabulary %d (%s), %d parameters, "
                 "%d epochs x %d steps on %s", n, x.shape[1], tok.vocab_size,
                 "restricted to training tokens" if tok.restricted else "full WordPiece", n_params,
                 config.epochs, steps_per_epoch, device)
        model.train()
        bar = tqdm(range(config.epochs), desc="report decoder", unit="epoch", disable=not config.progress,
                   leave=False)
        for epoch in bar:
            order = torch.randperm(n, generator=order_rng).tolist()
            losses, weights = [], []
            for b in range(0, n, config.batch_size):
                idx = order[b:b + config.batch_size]
                tokens = _pad([local[i] for i in idx], model.pad_local).to(device)
                loss = model.loss(features[idx], tokens)
                engine.zero_grad()
                engine.backward(loss)
                engine.step()
                losses.append(float(loss.detach()))
                weights.append(int((tokens[:, 1:] != model.pad_local).sum()))
            mean_loss = float(np.average(losses, weights=weights))
            model.history.append({"epoch": epoch + 1, "train_loss": mean_loss,
                                  "lr": engine.lr})
            bar.set_postfix(loss=f"{mean_loss:.3f}")
        model.eval()
    log.info("report decoder trained in %.1f s; final train loss %.4f", time.perf_counter() - start,
             model.history[-1]["train_loss"])
    return model


def generate_reports(decoder: ReportDecoder, embeddings: ArrayLike, batch_size: int | None = None,
                     max_len: int | None = None) -> list[str]:
    """Greedy-decoded report text for each row of the (N, E) ``embeddings``."""
    x = _as_matrix(embeddings)
    if x.shape[1] != decoder.embed_dim:
        raise ValueError(f"embeddings have width {x.shape[1]} but the decoder was trained on width "
                         f"{decoder.embed_dim}")
    batch_size = int(batch_size or decoder.config.batch_size)
    was_training = decoder.training
    decoder.eval()
    out: list[str] = []
    features = torch.from_numpy(x).to(decoder.device)
    try:
        for b in range(0, x.shape[0], batch_size):
            for row in decoder.greedy(features[b:b + batch_size], max_len=max_len):
                out.append(decoder.tokenizer.decode(decoder.tokenizer.to_global(row)))
    finally:
        decoder.train(was_training)
    return out


# --------------------------------------------------------------------------------------------- baseline
def nearest_report_baseline(train_embeddings: ArrayLike, train_texts: Sequence[str],
                            query_embeddings: ArrayLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """For each query row, the training report with the most cosine-similar embedding.

    Returns (texts, index of the training row, cosine similarity). An all-zero vector has similarity 0 with
    everything; ties go to the lowest training index.
    """
    train = _as_matrix(train_embeddings, "train_embeddings").astype(np.float64)
    texts = _check_texts(train_texts, train.shape[0], "train_texts")
    query = _as_matrix(query_embeddings, "query_embeddings").astype(np.float64)
    if query.shape[1] != train.shape[1]:
        raise ValueError(f"query embeddings have width {query.shape[1]}, training embeddings {train.shape[1]}")
    a = train / np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    sims = q @ a.T
    best = sims.argmax(axis=1)
    return [texts[i] for i in best], best.astype(np.int64), sims[np.arange(len(best)), best]


# ------------------------------------------------------------------------------------------- evaluation
def load_report_texts(reports_parquet: str | Path, patient_ids: Sequence[str]) -> list[str]:
    """The cleaned report text (``text`` column of ``reports.parquet``) of each patient, in the given order."""
    from pathmm_pipeline.reports.stage import read_clean_table

    ids, texts = read_clean_table(Path(reports_parquet), "text")
    by_id = dict(zip(ids, texts))
    missing = [p for p in patient_ids if str(p) not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} patient(s) have no report in {reports_parquet}: {missing[:10]}")
    return [by_id[str(p)] for p in patient_ids]


def evaluate_generation(train_embeddings: ArrayLike, train_texts: Sequence[str], test_embeddings: ArrayLike,
                        test_texts: Sequence[str], config: GenerationConfig | None = None,
                        test_ids: Sequence[str] | None = None, train_ids: Sequence[str] | None = None,
                        return_decoder: bool = False) -> tuple[Any, ...]:
    """Train on the training patients, generate for the test patients, score decoder and retrieval baseline.

    Returns a per-patient DataFrame (``patient_id``, ``reference``, ``generated``, ``retrieved``,
    ``retrieved_from``, ``retrieval_cosine``, then ``decoder_<score>`` and ``retrieval_<score>`` for every key
    of :data:`~pathmm_pipeline.stats.text_metrics.SCORE_KEYS`) and the corpus scores
    ``{"decoder": {...}, "retrieval": {...}}``. The frame's ``attrs`` record the config, tokenizer and metrics.
    With ``return_decoder`` the trained decoder comes third. The decoder's schedule is fixed (no epoch is
    chosen on any patient) and its vocabulary and feature statistics come from the training patients only.
    """
    import pandas as pd

    from pathmm_pipeline.stats.text_metrics import SCORE_KEYS, describe_metrics, score_generation, score_items

    config = config or GenerationConfig()
    train_x = _as_matrix(train_embeddings, "train_embeddings")
    train_texts = _check_texts(train_texts, train_x.shape[0], "train_texts")
    test_x = _as_matrix(test_embeddings, "test_embeddings")
    test_texts = _check_texts(test_texts, test_x.shape[0], "test_texts")
    if test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"test embeddings have width {test_x.shape[1]}, training embeddings {train_x.shape[1]}")
    test_ids = [str(i) for i in (test_ids if test_ids is not None else range(test_x.shape[0]))]
    train_ids = [str(i) for i in (train_ids if train_ids is not None else range(train_x.shape[0]))]
    if len(test_ids) != test_x.shape[0] or len(train_ids) != train_x.shape[0]:
        raise ValueError("test_ids / train_ids must have one id per embedding row")

    decoder = train_report_decoder(train_x, train_texts, config)
    generated = generate_reports(decoder, test_x)
    retrieved, index, cosine = nearest_report_baseline(train_x, train_texts, test_x)
    frame = pd.DataFrame({"patient_id": test_ids, "reference": test_texts, "generated": generated,
                          "retrieved": retrieved, "retrieved_from": [train_ids[i] for i in index],
                          "retrieval_cosine": cosine})
    for prefix, hyps in (("decoder", generated), ("retrieval", retrieved)):
        items = score_items(test_texts, hyps)
        for key in SCORE_KEYS:
            frame[f"{prefix}_{key}"] = [row[key] for row in items]
    corpus = {"decoder": score_generation(test_texts, generated),
              "retrieval": score_generation(test_texts, retrieved)}
    frame.attrs.update({"config": asdict(config), "tokenizer": decoder.tokenizer.describe(),
                        "metrics": describe_metrics(), "n_train": int(train_x.shape[0]),
                        "n_test": int(test_x.shape[0]), "train_history": list(decoder.history)})
    log.info("report generation on %d test patients: decoder %s; nearest-report baseline %s", len(test_ids),
             _fmt(corpus["decoder"]), _fmt(corpus["retrieval"]))
    return (frame, corpus, decoder) if return_decoder else (frame, corpus)


def _fmt(scores: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items())


__all__ = ["GenerationConfig", "ReportDecoder", "ReportTokenizer", "evaluate_generation", "generate_reports",
           "load_report_texts", "nearest_report_baseline", "tidy_decoded", "train_report_decoder"]
