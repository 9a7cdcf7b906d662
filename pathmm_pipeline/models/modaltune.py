"""ModalTune: a frozen slide foundation model tuned by Modal Adapters that exchange information between its
image tokens and pathway + task-prompt tokens, trained against text embeddings of the patients' clinical data
on several tasks at once (the ``modaltune`` model).

Holds the text targets (:func:`text_targets`, :class:`HashingTextEncoder`, :class:`TextProjector`,
:func:`multitask_kl`; the sentences themselves are :mod:`pathmm_pipeline.models.clinical_text`), the adapter
blocks (:class:`Injector`, :class:`Extractor`, :class:`ModalAdapter`, :class:`PathwayTokens`), the published
probe head (:class:`ProbeHead`) and :class:`ModalTune`.
Paper: Ramanathan et al., "Fine-Tuning Slide-Level Foundation Models with Multi-Modal Information".
Paper-to-code mapping and deviations: docs/methods/modaltune.md
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pathmm_pipeline.encoders.slide import SlideEncoder, build_slide_encoder
from pathmm_pipeline.models.base import (
    InputDims,
    ModelConfigError,
    ModelInputError,
    ModelOutput,
    PathmmModel,
    PatientInput,
    PretrainBatch,
    TaskSpec,
)
from pathmm_pipeline.models.clinical_text import SubtypeGroups, patient_sentences, task_texts
from pathmm_pipeline.models.layers import MissingEmbedding, snn
from pathmm_pipeline.models.losses import logits_from_cumulative_hazard
from pathmm_pipeline.models.objectives import kl_softmax
from pathmm_pipeline.models.registry import register_model
from pathmm_pipeline.stats.cox import fit_cox_probe

#: the reference's four tasks: general, primary diagnosis (``subtype``), stage and survival
DEFAULT_TASKS = ("general", "survival", "subtype", "stage")
#: how a fold's head is made: the published probe on frozen general-prompt features, or end-to-end fine-tuning
PROTOCOLS = ("probe", "finetune")
#: the published probe penalties (reference ``utils/test_utils_modaltune.py``: lifelines ``penalizer=0.1``;
#: sklearn ``LogisticRegression(solver="liblinear", max_iter=200)``, i.e. C = 1)
PROBE_COX_PENALTY = 0.1
PROBE_LOGISTIC_C = 1.0
PROBE_LOGISTIC_CS = (0.01, 0.1, 1.0, 10.0)
#: a text encoder: n texts -> an (n, D) array or tensor
TextEncoderFn = Callable[[list[str]], Any]
_TASK_NAME = re.compile(r"^[A-Za-z0-9_]+$")


# ---------------------------------------------------------------------------------------------- text targets


def embed_texts(texts: Sequence[str], encoder_fn: TextEncoderFn) -> torch.Tensor:
    """``encoder_fn(texts)`` as an (n, D) float32 CPU tensor (checked)."""
    raw = encoder_fn(list(texts))
    emb = raw.detach().to("cpu", torch.float32) if isinstance(raw, torch.Tensor) else \
        torch.as_tensor(np.asarray(raw, dtype=np.float32))
    if emb.dim() != 2 or emb.shape[0] != len(texts):
        raise ValueError(f"the text encoder returned shape {tuple(emb.shape)} for {len(texts)} texts, expected "
                         f"({len(texts)}, D)")
    return emb


def text_targets(texts: Mapping[str, str], encoder_fn: TextEncoderFn,
                 projector: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Each task's text (``{task: text}``, :func:`~pathmm_pipeline.models.clinical_text.task_texts`) embedded
    by ``encoder_fn`` (one call for all of them) and, with a ``projector`` (:class:`TextProjector`), mapped to its
    width: ``{task: (1, D)}``."""
    if not texts:
        return {}
    emb = embed_texts(list(texts.values()), encoder_fn)
    if projector is not None:
        emb = projector(emb)
    return {t: emb[i:i + 1] for i, t in enumerate(texts)}


class HashingTextEncoder:
    """Deterministic offline text embedding: lower-cased words (numbers keep their decimals) and word bigrams,
    each hashed (blake2b) to one of ``dim`` buckets with a hashed sign, summed, L2-normalised. Stable across
    processes and machines; different clinical values give different (near-orthogonal) embeddings."""

    def __init__(self, dim: int = 384, bigrams: bool = True) -> None:
        if dim < 1:
            raise ValueError(f"HashingTextEncoder needs dim >= 1, got {dim}")
        self.dim, self.bigrams = int(dim), bool(bigrams)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            words = re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", str(text).lower())
            features = words + ([f"{a} {b}" for a, b in zip(words, words[1:])] if self.bigrams else [])
            for f in features:
                h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
            norm = float(np.linalg.norm(out[i]))
            if norm > 0:
                out[i] /= norm
        return out

    def __repr__(self) -> str:
        return f"HashingTextEncoder(dim={self.dim}, bigrams={self.bigrams})"


class TextProjector(nn.Module):
    """The fixed random projector of the text embeddings (published ``Projection_layer``, frozen):
    ``Linear(d_in, d_out) -> LayerNorm -> ReLU -> Linear(d_out, d_out)``, weights and biases drawn from
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's conv/linear default) with a private generator seeded by
    ``seed``; stored as buffers (saved with the model, never trained)."""

    def __init__(self, d_in: int, d_out: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))

        def uniform(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
            return (torch.rand(shape, generator=g) * 2.0 - 1.0) / math.sqrt(fan_in)

        self.d_in, self.d_out = d_in, d_out
        self.register_buffer("w1", uniform((d_out, d_in), d_in))
        self.register_buffer("b1", uniform((d_out,), d_in))
        self.register_buffer("w2", uniform((d_out, d_out), d_out))
        self.register_buffer("b2", uniform((d_out,), d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.w1.device, dtype=self.w1.dtype)
        h = F.relu(F.layer_norm(F.linear(x, self.w1, self.b1), (self.d_out,)))
        return F.linear(h, self.w2, self.b2)


def multitask_kl(task_embeddings: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                 temperature: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """Mean over the tasks in both dicts of ``kl_softmax(pred / T, target / T) * T^2`` (rows: patients), each
    side L2-normalised first when ``normalize`` (as published). Targets are constants (detached)."""
    tasks = [t for t in targets if t in task_embeddings]
    if not tasks:
        raise ValueError(f"multitask_kl: no task in common between the embeddings {sorted(task_embeddings)} and "
                         f"the targets {sorted(targets)}")
    terms = []
    for t in tasks:
        pred = task_embeddings[t].reshape(-1, task_embeddings[t].shape[-1])
        target = targets[t].detach().to(device=pred.device, dtype=pred.dtype).reshape(-1, pred.shape[-1])
        if target.shape != pred.shape:
            raise ValueError(f"multitask_kl: task '{t}' has embeddings {tuple(pred.shape)} but targets "
                             f"{tuple(target.shape)}")
        if normalize:
            pred, target = F.normalize(pred, dim=-1), F.normalize(target, dim=-1)
        terms.append(kl_softmax(pred / temperature, target / temperature) * temperature ** 2)
    return torch.stack(terms).mean()


# ---------------------------------------------------------------------------------------------- adapter blocks


class _Attention(nn.Module):
    """Multi-head attention core: q from ``q_dim``, k/v from ``kv_dim``, ``inner`` wide, output ``out_dim``."""

    def __init__(self, q_dim: int, kv_dim: int, inner: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(q_dim, inner)
        self.to_k = nn.Linear(kv_dim, inner)
        self.to_v = nn.Linear(kv_dim, inner)
        self.to_out = nn.Linear(inner, out_dim)
        for lin in (self.to_q, self.to_k, self.to_v, self.to_out):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, tq, _ = q.shape
        h = self.heads
        q, k, v = (p(t).view(b, t.shape[1], h, -1).transpose(1, 2)
                   for p, t in ((self.to_q, q), (self.to_k, k), (self.to_v, v)))
        attn = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2), dim=-1) @ v
        return self.to_out(attn.transpose(1, 2).reshape(b, tq, -1))


class CrossAttention(_Attention):
    """Pre-norm cross-attention without residual (published ``CrossAttentionLayer.forward_pre``):
    queries ``LN(query) + query_pos``, keys = values = ``LN(memory) + memory_pos``."""

    def __init__(self, q_dim: int, kv_dim: int, inner: int, heads: int) -> None:
        super().__init__(q_dim, kv_dim, inner, heads, q_dim)
        self.norm = nn.LayerNorm(q_dim)
        self.norm_kv = nn.LayerNorm(kv_dim)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, query_pos: torch.Tensor | None = None,
                memory_pos: torch.Tensor | None = None) -> torch.Tensor:
        q = self.norm(query)
        kv = self.norm_kv(memory)
        if query_pos is not None:
            q = q + query_pos
        if memory_pos is not None:
            kv = kv + memory_pos
        return self.attend(q, kv, kv)


class TokenSelfAttention(_Attention):
    """Pre-norm self-attention over the modality tokens, returning the update (published
    ``SelfAttentionLayer.forward_pre``: q = k = LN(c) + pos, v = LN(c))."""

    def __init__(self, dim: int, inner: int, heads: int) -> None:
        super().__init__(dim, dim, inner, heads, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, c: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self.norm(c)
        return self.attend(x + pos, x + pos, x)


class FeedForward(nn.Module):
    """Pre-norm FFN returning the update: LN -> Linear(dim, hidden) -> ReLU -> Linear(hidden, dim)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Injector(nn.Module):
    """Patch tokens += gamma * CrossAttention(patch tokens -> modality tokens); gamma (E,) starts at zero."""

    def __init__(self, image_dim: int, dim: int, inner: int, heads: int) -> None:
        super().__init__()
        self.attn = CrossAttention(image_dim, dim, inner, heads)
        self.gamma = nn.Parameter(torch.zeros(image_dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.attn(x, c, memory_pos=pos)


class Extractor(nn.Module):
    """Modality tokens += CrossAttention(modality tokens -> patch tokens), then += FFN."""

    def __init__(self, image_dim: int, dim: int, inner: int, heads: int) -> None:
        super().__init__()
        self.attn = CrossAttention(dim, image_dim, inner, heads)
        self.ffn = FeedForward(dim, inner)

    def forward(self, c: torch.Tensor, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        c = c + self.attn(c, x, query_pos=pos)
        return c + self.ffn(c)


class ModalAdapter(nn.Module):
    """One adapter around a group of frozen blocks: [token self-attention], injector, extractor."""

    def __init__(self, image_dim: int, dim: int, inner: int, heads: int, self_attention: bool) -> None:
        super().__init__()
        self.self_attn = TokenSelfAttention(dim, inner, heads) if self_attention else None
        self.injector = Injector(image_dim, dim, inner, heads)
        self.extractor = Extractor(image_dim, dim, inner, heads)


class MixerBlock(nn.Module):
    """MLP-mixer block over (1, P, D) tokens: pre-norm residual token mixing, then channel mixing."""

    def __init__(self, n_tokens: int, width: int, expansion: float = 0.5, dropout: float = 0.0) -> None:
        super().__init__()
        tok, ch = max(1, int(n_tokens * expansion)), max(1, int(width * expansion))
        self.token_norm = nn.LayerNorm(width)
        self.token_mix = nn.Sequential(nn.Linear(n_tokens, tok), nn.GELU(), nn.Dropout(dropout),
                                       nn.Linear(tok, n_tokens), nn.Dropout(dropout))
        self.channel_norm = nn.LayerNorm(width)
        self.channel_mix = nn.Sequential(nn.Linear(width, ch), nn.GELU(), nn.Dropout(dropout),
                                         nn.Linear(ch, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mix(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mix(self.channel_norm(x))


class PathwayTokens(nn.Module):
    """Pathway SNN tokens -> MLP mixer -> LN -> Linear(gene_dim, dim) -> compressed to ``n_tokens`` tokens."""

    def __init__(self, sizes: Sequence[int], gene_dim: int, dim: int, n_tokens: int, depth: int,
                 dropout: float) -> None:
        super().__init__()
        p = len(sizes)
        self.snns = nn.ModuleList(snn(s, [gene_dim, gene_dim], dropout) for s in sizes)
        self.mixer = nn.Sequential(*[MixerBlock(p, gene_dim, 0.5, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(gene_dim)
        self.proj = nn.Linear(gene_dim, dim)
        self.compress = nn.Linear(p, n_tokens)

    def forward(self, pathways: Sequence[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([net(v) for net, v in zip(self.snns, pathways)]).unsqueeze(0)   # (1, P, gene_dim)
        x = self.proj(self.norm(self.mixer(x)))                                      # (1, P, dim)
        return self.compress(x.transpose(1, 2)).transpose(1, 2)                      # (1, n_tokens, dim)


class ProbeHead(nn.Module):
    """The published evaluation head, fitted in closed form on frozen general-prompt features of the fold's
    training patients (reference ``utils/test_utils_modaltune.py``): survival, a lifelines ridge Cox on the
    standardised features (``penalty`` 0.1), written as discrete-bin logits through Breslow's baseline hazard
    per time bin (or the linear predictor for a Cox task); classification, sklearn's
    ``LogisticRegression(solver="liblinear", max_iter=200)`` on the raw features (``C`` 1); its decision
    function is the logits. Buffers only: saved with the model, never stepped."""

    def __init__(self, dim: int, task: TaskSpec, penalty: float = PROBE_COX_PENALTY,
                 c: float = PROBE_LOGISTIC_C) -> None:
        super().__init__()
        if penalty < 0 or c <= 0:
            raise ModelConfigError(f"the probe needs penalty >= 0 and C > 0, got {penalty}, {c}")
        self.task, self.penalty, self.c = task, float(penalty), float(c)
        rows = 1 if task.kind == "survival" else task.n_outputs
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("weight", torch.zeros(rows, dim))
        self.register_buffer("bias", torch.zeros(rows))
        self.register_buffer("baseline", torch.full((task.n_outputs,), 1e-3))
        self.register_buffer("chosen_penalty", torch.tensor(float(penalty if task.kind == "survival" else 1 / c)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = (z.float() - self.mean) / self.scale
        out = u @ self.weight.T + self.bias                                   # (1, rows)
        if self.task.kind == "survival":
            if self.task.is_cox:
                return out
            return logits_from_cumulative_hazard(self.baseline * torch.exp(out))  # (1, n_bins)
        return out

    def fit(self, x: np.ndarray, time: np.ndarray, event: np.ndarray, label: np.ndarray | None,
            x_check: np.ndarray | None, time_check: np.ndarray | None, event_check: np.ndarray | None,
            label_check: np.ndarray | None, edges: np.ndarray | None) -> list[dict[str, Any]]:
        """Fit on the rows of ``x`` (a penalty / C searched on the ``check`` rows when given, then refitted on
        both); returns one history row per candidate tried, the chosen one last."""
        if self.task.kind == "survival":
            fitted, rows = fit_cox_probe(x, time, event, self.penalty, x_check, time_check, event_check,
                                         edges=None if self.task.is_cox else edges)
            with torch.no_grad():
                self.mean.copy_(torch.as_tensor(fitted["mean"], dtype=torch.float32))
                self.scale.copy_(torch.as_tensor(fitted["scale"], dtype=torch.float32))
                self.weight.copy_(torch.as_tensor(fitted["beta"], dtype=torch.float32).reshape(1, -1))
                self.chosen_penalty.fill_(float(fitted["penalty"]))
                if "baseline" in fitted:
                    self.baseline.copy_(torch.as_tensor(fitted["baseline"], dtype=torch.float32))
            return rows
        return self._fit_logistic(x, np.asarray(label, int), x_check,
                                  None if label_check is None else np.asarray(label_check, int))

    def _fit_logistic(self, x: np.ndarray, y: np.ndarray, x_check: np.ndarray | None,
                      y_check: np.ndarray | None) -> list[dict[str, Any]]:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import balanced_accuracy_score
        from sklearn.multiclass import OneVsRestClassifier

        def fit(xs: np.ndarray, ys: np.ndarray, c: float) -> Any:
            if len(np.unique(ys)) < 2:
                raise ValueError(f"the probe needs >= 2 classes among its training patients, got {np.unique(ys)}")
            clf = LogisticRegression(C=c, solver="liblinear", max_iter=200, random_state=0)
            # liblinear is one-vs-rest over >= 3 classes (the reference's sklearn did it implicitly)
            return (OneVsRestClassifier(clf) if len(np.unique(ys)) > 2 else clf).fit(xs, ys)

        rows: list[dict[str, Any]] = []
        c = self.c
        if x_check is not None and len(x_check) and y_check is not None:
            best = -np.inf
            for candidate in PROBE_LOGISTIC_CS:
                score = float(balanced_accuracy_score(y_check, fit(x, y, candidate).predict(x_check)))
                rows.append({"penalty": 1.0 / candidate, "inner_val_metric": score})
                if score > best:  # ties: the smaller C (the stronger penalty), tried first
                    best, c = score, candidate
            x, y = np.vstack([x, x_check]), np.concatenate([y, y_check])
        clf = fit(x, y, c)
        parts = getattr(clf, "estimators_", [clf])
        coef = np.vstack([np.asarray(e.coef_, np.float64) for e in parts])
        intercept = np.concatenate([np.asarray(e.intercept_, np.float64).reshape(-1) for e in parts])
        k = self.weight.shape[0]
        weight, bias = np.zeros((k, coef.shape[1])), np.zeros(k)
        if coef.shape[0] == 1:  # two classes: one decision function for class 1
            row = k - 1
            weight[row], bias[row] = coef[0], intercept[0]
            if k == 2:
                weight[0], bias[0] = 0.0, 0.0
        else:
            weight[clf.classes_], bias[clf.classes_] = coef, intercept
        with torch.no_grad():
            self.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
            self.chosen_penalty.fill_(1.0 / c)
        rows.append({"penalty": 1.0 / c, "chosen": True, "n_fit": len(y)})
        return rows


@dataclass
class ModalTuneState:
    """One pass: the finalised image tokens (1, T, E), the modality tokens after the last extractor (1, K, dim)
    and the task embeddings (1, n_tasks, out_dim), in ``tasks`` order."""

    image_tokens: torch.Tensor
    modality_tokens: torch.Tensor
    task_embeddings: torch.Tensor


# ---------------------------------------------------------------------------------------------- the model


@register_model("modaltune")
class ModalTune(PathmmModel):
    """ModalTune: a frozen slide encoder with Modal Adapters to pathway and task-prompt tokens (see the module
    docstring). Needs ``wsi`` (with ``wsi_coords``); genomics (``pathways``) is optional.

    Options: ``slide_encoder`` ("tiny_slide"; "gigapath_slide"), ``slide_weights`` (None; a local checkpoint
    file), ``dim`` (None: the encoder width), ``heads`` (4), ``adapter_every`` (None: depth // 3, at least 1),
    ``n_pathway_tokens`` (64), ``gene_dim`` (256), ``mixer_depth`` (3), ``cffn_ratio`` (0.25),
    ``extra_extractors`` (2), ``prompt_self_attention`` (True), ``out_dim`` (None: dim), ``tasks``
    (("general", "survival", "subtype", "stage")), ``task`` (None: from the task kind), ``text_dim`` (384),
    ``kl_weight`` (10.0), ``temperature`` (1.0), ``projector_seed`` (0), ``cancer_type_names`` (None),
    ``dropout`` (0.25, SNN and mixer), ``checkpoint_blocks`` (False: recompute the frozen blocks in the backward
    pass, for long slides), ``modality_dropout`` (0.0), ``text_encoder`` ("hashing": offline; "minilm", "conch"
    or any text encoder of :mod:`pathmm_pipeline.encoders.text`, loaded on first use; CONCH, the published one,
    gives ``text_dim`` 512), ``text_encoder_path`` (None: the local folder of ``conch`` / ``hf_local``),
    ``rare_subtype_min`` (10: subtypes with fewer pretraining patients form the rare set), ``protocol``
    ("probe": the published evaluation, a :class:`ProbeHead` fitted on the frozen general-prompt features;
    "finetune": end-to-end fine-tuning of the adapters and a linear head), ``probe_penalty`` (0.1) and
    ``probe_c`` (1.0), the published probe penalties. The embedding is the selected task embedding (out_dim);
    under ``probe``, the general one.
    """

    uses = frozenset({"wsi", "genomics"})
    requires = frozenset({"wsi"})
    genomics_field = "pathways"
    pretrainable = True

    def __init__(self, dims: InputDims, task: TaskSpec, slide_encoder: str = "tiny_slide",
                 slide_weights: str | None = None, dim: int | None = None, heads: int = 4,
                 adapter_every: int | None = None, n_pathway_tokens: int = 64, gene_dim: int = 256,
                 mixer_depth: int = 3, cffn_ratio: float = 0.25, extra_extractors: int = 2,
                 prompt_self_attention: bool = True, out_dim: int | None = None,
                 tasks: Sequence[str] = DEFAULT_TASKS, task_prompt: str | None = None, text_dim: int = 384,
                 kl_weight: float = 10.0, temperature: float = 1.0, projector_seed: int = 0,
                 cancer_type_names: Sequence[str] | None = None, dropout: float = 0.25,
                 checkpoint_blocks: bool = False, modality_dropout: float = 0.0,
                 text_encoder: str = "hashing", text_encoder_path: str | None = None,
                 rare_subtype_min: int = 10, protocol: str = "probe",
                 probe_penalty: float = PROBE_COX_PENALTY, probe_c: float = PROBE_LOGISTIC_C) -> None:
        modalities = {"wsi"} | ({"genomics"} if dims.pathway_sizes is not None else set())
        super().__init__(dims, task, modalities=frozenset(modalities), modality_dropout=modality_dropout)
        d_in = self.need_dim(dims.wsi, "wsi", "wsi")
        self.slide_encoder: SlideEncoder = build_slide_encoder(slide_encoder, d_in, slide_weights)
        self.slide_encoder_name = slide_encoder
        image_dim = self.slide_encoder.embed_dim
        depth = self.slide_encoder.depth
        dim = image_dim if dim is None else int(dim)
        out_dim = dim if out_dim is None else int(out_dim)
        every = max(1, depth // 3) if adapter_every is None else int(adapter_every)
        inner = int(dim * cffn_ratio)
        self.tasks = [str(t) for t in tasks]
        if protocol not in PROTOCOLS:
            raise ModelConfigError(f"model '{self.name}': protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if protocol == "probe" and "general" not in self.tasks:
            raise ModelConfigError(f"model '{self.name}': the probe protocol reads the general prompt; add "
                                   f"'general' to tasks {self.tasks}")
        if rare_subtype_min < 0:
            raise ModelConfigError(f"model '{self.name}': rare_subtype_min must be >= 0, got {rare_subtype_min}")
        self.protocol = protocol
        #: a closed-form head (the published probe) instead of gradient steps; read by the training loop
        self.direct_fit = protocol == "probe"
        self.rare_subtype_min = int(rare_subtype_min)
        self.subtype_groups = SubtypeGroups(min_patients=0)
        chosen = self._choose_task(task, task_prompt)
        self.task_name = "general" if protocol == "probe" else chosen
        self._check_options(dim, heads, inner, every, depth, n_pathway_tokens, gene_dim, mixer_depth,
                            extra_extractors, out_dim, text_dim, kl_weight, temperature, dropout)
        self.dim, self.out_dim, self.image_dim = dim, out_dim, image_dim
        self.groups = [(s, min(s + every, depth)) for s in range(0, depth, every)]
        self.kl_weight, self.temperature = float(kl_weight), float(temperature)
        self.text_dim = int(text_dim)
        self.checkpoint_blocks = bool(checkpoint_blocks)
        n_types = dims.n_cancer_types
        names = [f"cancer type {i}" for i in range(n_types)] if cancer_type_names is None else \
            [str(n) for n in cancer_type_names]
        if len(names) != n_types:
            raise ModelConfigError(f"model '{self.name}': {len(names)} cancer_type_names for "
                                   f"InputDims.n_cancer_types={n_types}")
        self.cancer_type_names = names

        # -- modality tokens
        n_tasks = len(self.tasks)
        self.prompts = nn.Parameter(nn.init.trunc_normal_(torch.zeros(n_tasks, dim), std=0.02))
        self.token_pos = nn.Parameter(nn.init.trunc_normal_(torch.zeros(n_tasks + n_pathway_tokens, dim), std=0.02))
        self.pathway_tokens = (PathwayTokens(dims.pathway_sizes, gene_dim, dim, n_pathway_tokens, mixer_depth,
                                             dropout) if "genomics" in self.modalities else None)
        self.missing_pathways = MissingEmbedding(n_pathway_tokens, dim)

        # -- adapters
        self.adapters = nn.ModuleList(ModalAdapter(image_dim, dim, inner, heads, prompt_self_attention and i > 0)
                                      for i in range(len(self.groups)))
        self.extra_extractors = nn.ModuleList(Extractor(image_dim, dim, inner, heads)
                                              for _ in range(extra_extractors))

        # -- task embeddings, text targets, head
        self.image_proj = nn.Linear(image_dim, dim) if image_dim != dim else nn.Identity()
        self.final_norm = nn.LayerNorm(dim)
        self.final_project = nn.Linear(dim, out_dim)
        nn.init.trunc_normal_(self.final_project.weight, std=0.02)
        nn.init.zeros_(self.final_project.bias)
        self.projector = TextProjector(self.text_dim, out_dim, projector_seed)
        self.classifier = nn.Linear(out_dim, task.n_outputs)
        self.probe = ProbeHead(out_dim, task, probe_penalty, probe_c) if protocol == "probe" else None
        self.embedding_dim = out_dim
        self._text_encoder: TextEncoderFn = HashingTextEncoder(self.text_dim)
        self._text_cache: dict[str, torch.Tensor] = {}
        #: "hashing" (offline, deterministic) or a text encoder of :mod:`pathmm_pipeline.encoders.text`
        #: (e.g. "minilm"), loaded on first use so that building the model stays cheap
        self.text_encoder_name = str(text_encoder)
        self.text_encoder_path = None if text_encoder_path is None else str(text_encoder_path)
        self._text_encoder_loaded = self.text_encoder_name == "hashing"

    def _choose_task(self, task: TaskSpec, task_prompt: str | None) -> str:
        if not self.tasks or len(set(self.tasks)) != len(self.tasks) or \
                not all(_TASK_NAME.match(t) for t in self.tasks):
            raise ModelConfigError(f"model '{self.name}': tasks must be distinct names of letters, digits and "
                                   f"underscores, got {self.tasks}")
        if task_prompt is not None:
            if task_prompt not in self.tasks:
                raise ModelConfigError(f"model '{self.name}': task_prompt {task_prompt!r} is not one of the "
                                       f"tasks {self.tasks}")
            return task_prompt
        preferred = "survival" if task.kind == "survival" else "subtype"
        for name in (preferred, "general"):
            if name in self.tasks:
                return name
        return self.tasks[0]

    def _check_options(self, dim: int, heads: int, inner: int, every: int, depth: int, n_pathway_tokens: int,
                       gene_dim: int, mixer_depth: int, extra_extractors: int, out_dim: int, text_dim: int,
                       kl_weight: float, temperature: float, dropout: float) -> None:
        problems = []
        if dim < 1 or heads < 1 or inner < heads or inner % heads:
            problems.append(f"the attention width dim * cffn_ratio = {inner} must be a positive multiple of "
                            f"heads ({heads})")
        if not 1 <= every <= depth:
            problems.append(f"adapter_every must be in [1, {depth}] (the slide encoder's depth), got {every}")
        for what, value in (("n_pathway_tokens", n_pathway_tokens), ("gene_dim", gene_dim),
                            ("out_dim", out_dim), ("text_dim", text_dim)):
            if value < 1:
                problems.append(f"{what} must be >= 1, got {value}")
        if mixer_depth < 0 or extra_extractors < 0:
            problems.append(f"mixer_depth and extra_extractors must be >= 0, got {mixer_depth}, {extra_extractors}")
        if not kl_weight >= 0.0 or not temperature > 0.0:
            problems.append(f"need kl_weight >= 0 and temperature > 0, got {kl_weight}, {temperature}")
        if not 0.0 <= dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {dropout}")
        if problems:
            raise ModelConfigError(f"model '{self.name}': " + "; ".join(problems))

    # -- frozen encoder --------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> ModalTune:
        """Train the adapters; the frozen slide encoder stays in eval mode."""
        super().train(mode)
        self.slide_encoder.eval()
        return self

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """All but the heads (linear and probe) and the frozen slide encoder (rebuilt from ``slide_encoder`` /
        ``slide_weights``)."""
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith(("classifier.", "probe.", "slide_encoder."))}

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(trainable_parameters=self.trainable_parameters(), slide_encoder=self.slide_encoder_name,
                    slide_weights=self.slide_encoder.weights_source,
                    slide_weights_sha256=self.slide_encoder.weights_sha256, tasks=list(self.tasks),
                    task_prompt=self.task_name, adapter_groups=[list(g) for g in self.groups],
                    protocol=self.protocol)
        return info

    # -- forward --------------------------------------------------------------------------------------------

    def modality_tokens(self, pathways: Sequence[torch.Tensor] | None) -> torch.Tensor:
        """(1, n_tasks + n_pathway_tokens, dim): the prompts, then the pathway (or missing) tokens."""
        if pathways is not None and self.pathway_tokens is not None:
            path = self.pathway_tokens([self.as_input(v.reshape(1, -1)) for v in pathways])
        else:
            path = self.missing_pathways().unsqueeze(0)
        return torch.cat([self.prompts.unsqueeze(0), path], dim=1)

    def encode(self, wsi: torch.Tensor, coords: torch.Tensor,
               pathways: Sequence[torch.Tensor] | None = None) -> ModalTuneState:
        """The adapted pass over one slide (``wsi`` (N, D), ``coords`` (N, 2)) and optional pathways."""
        enc = self.slide_encoder
        h = enc.embed(wsi, coords)
        c = self.modality_tokens(pathways)
        pos = self.token_pos.unsqueeze(0)
        p = enc.n_prefix
        blocks = enc.blocks
        for adapter, (lo, hi) in zip(self.adapters, self.groups):
            if adapter.self_attn is not None:
                c = c + adapter.self_attn(c, pos)
            h = torch.cat([h[:, :p], adapter.injector(h[:, p:], c, pos)], dim=1)
            for block in blocks[lo:hi]:
                if self.checkpoint_blocks and h.requires_grad:
                    h = checkpoint(block, h, use_reentrant=False)
                else:
                    h = block(h)
            c = adapter.extractor(c, h[:, p:], pos)
        for extractor in self.extra_extractors:
            c = extractor(c, h[:, p:], pos)
        h = enc.finalize(h)
        n = len(self.tasks)
        img = self.image_proj(h[:, :1])                                   # (1, 1, dim)
        fused = img + c[:, n:].mean(dim=1, keepdim=True) + c[:, :n]       # (1, n_tasks, dim)
        return ModalTuneState(h, c, self.final_project(self.final_norm(fused)))

    def forward(self, x: PatientInput, targets: Mapping[str, torch.Tensor] | None = None) -> ModelOutput:
        """``targets`` (optional): projected text targets ``{task: (1, out_dim)}`` (:meth:`targets_for`); with
        them ``extras["aux_loss"] = kl_weight * multitask_kl``, else None."""
        present = self.check_input(x)
        wsi = self.wsi_features(x)
        if x.wsi_coords is None:
            raise ModelInputError(f"model '{self.name}': the slide encoder needs wsi_coords (the patches' level-0 "
                                  f"(x, y) coordinates), which this patient lacks")
        coords = x.wsi_coords.reshape(-1, x.wsi_coords.shape[-1]).to(wsi.device)
        if tuple(coords.shape) != (wsi.shape[0], 2):
            raise ModelInputError(f"model '{self.name}': wsi_coords has shape {tuple(x.wsi_coords.shape)}, expected "
                                  f"({wsi.shape[0]}, 2): one (x, y) per patch")
        state = self.encode(wsi, coords, x.pathways if present.get("genomics") else None)
        embeddings = {t: state.task_embeddings[:, i] for i, t in enumerate(self.tasks)}
        z = embeddings[self.task_name]
        aux = None
        if targets:
            aux = self.kl_weight * multitask_kl(embeddings, targets, self.temperature)
        extras: dict[str, Any] = {
            "present": present, "missing": [m for m in sorted(self.modalities) if not present[m]],
            "task_embeddings": embeddings, "task": self.task_name, "aux_loss": aux,
            "injector_gates": torch.stack([a.injector.gamma.detach().abs().mean() for a in self.adapters]),
        }
        logits = self.probe(z) if self.probe is not None else self.classifier(z)
        return ModelOutput(logits, z, extras)

    @torch.no_grad()
    def fit_direct(self, fit: Sequence[PatientInput], fit_time: np.ndarray, fit_event: np.ndarray,
                   check: Sequence[PatientInput] = (), check_time: np.ndarray | None = None,
                   check_event: np.ndarray | None = None, edges: np.ndarray | None = None,
                   fit_label: np.ndarray | None = None, check_label: np.ndarray | None = None
                   ) -> list[dict[str, Any]]:
        """The published protocol: the frozen general-prompt features of the ``fit`` patients (the tuned model in
        eval mode) fit the :class:`ProbeHead`; with ``check`` patients (selection ``inner``) its penalty is
        searched on them first. Returns one history row per penalty tried."""
        if self.probe is None:
            raise ModelConfigError(f"model '{self.name}': fit_direct needs protocol 'probe'")
        was_training = self.training
        self.eval()

        def features(xs: Sequence[PatientInput]) -> np.ndarray:
            return np.stack([self(x).embedding.reshape(-1).float().cpu().numpy() for x in xs])

        x_check = features(check) if len(check) else None
        rows = self.probe.fit(features(fit), fit_time, fit_event, fit_label, x_check, check_time, check_event,
                              check_label, edges)
        self.train(was_training)
        return rows

    def task_embeddings(self, x: PatientInput) -> dict[str, torch.Tensor]:
        """Every task's (1, out_dim) embedding of one patient."""
        return self(x).extras["task_embeddings"]

    def task_embedding(self, x: PatientInput, task: str = "general") -> torch.Tensor:
        """One task's (1, out_dim) embedding (``"general"``: the features of the published linear / Cox
        evaluation). Call under ``torch.no_grad()`` and ``eval()`` for feature extraction."""
        if task not in self.tasks:
            raise ModelConfigError(f"model '{self.name}': no task prompt {task!r}; its tasks are {self.tasks}")
        return self.task_embeddings(x)[task]

    # -- text targets ---------------------------------------------------------------------------------------

    def set_text_encoder(self, encoder_fn: TextEncoderFn | None) -> None:
        """Use ``encoder_fn`` (``list[str] -> (n, text_dim)``, e.g. the pipeline's MiniLM) for the text targets;
        None restores the offline :class:`HashingTextEncoder`. Clears the embedding cache."""
        self._text_encoder = HashingTextEncoder(self.text_dim) if encoder_fn is None else encoder_fn
        self._text_cache = {}
        self._text_encoder_loaded = True

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        if not self._text_encoder_loaded:
            from pathmm_pipeline.encoders.text import get_text_encoder

            options = {} if self.text_encoder_path is None else {"path": self.text_encoder_path}
            self.set_text_encoder(get_text_encoder(self.text_encoder_name, **options).embed)
            self._text_encoder_loaded = True
        new = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if new:
            emb = embed_texts(new, self._text_encoder)
            if emb.shape[1] != self.text_dim:
                raise ModelConfigError(f"model '{self.name}': the text encoder gives {emb.shape[1]}-d embeddings "
                                       f"but the model was built with text_dim={self.text_dim} -- build it with "
                                       f"text_dim={emb.shape[1]}")
            self._text_cache.update({t: emb[i] for i, t in enumerate(new)})
        return torch.stack([self._text_cache[t] for t in texts])

    def clinical_sentences(self, cancer_type: int, time_bin: int | None = None, event: float | None = None,
                           time_edges: Sequence[float] | None = None,
                           clinical: Mapping[str, str] | None = None) -> dict[str, str]:
        """A patient's sentences (:func:`~pathmm_pipeline.models.clinical_text.patient_sentences`): the location
        of its cancer type (``cancer_type_names``) or the table's site, the diagnosis of ``clinical``'s subtype
        (through the rare set fitted by :meth:`fit_pretraining_corpus`), stage and T / N / M, and, when the bin is
        known (>= 0) and the event is 0/1, the survival sentence with the bin's edges in months (``time_edges``:
        equal-count bins of the training patients' event times; the reference's ``"before X months"`` for the
        first bin, ``"after X months"`` for the last); without edges, the bin's ordinal."""
        survival = None
        if time_bin is not None and event is not None and int(time_bin) >= 0 and float(event) in (0.0, 1.0):
            status = "died" if float(event) == 1.0 else "was censored"
            k = int(time_bin)
            if time_edges is not None and k + 1 < len(time_edges):
                low, high = float(time_edges[k]), float(time_edges[k + 1])
                if not math.isfinite(high):
                    survival = f"{status} after {low:.0f} months"
                elif k == 0:
                    survival = f"{status} before {high:.0f} months"
                else:
                    survival = f"{status} between {low:.0f} and {high:.0f} months"
            else:
                survival = f"{status} in follow-up interval {k + 1}"
        return patient_sentences(dict(clinical or {}), self.cancer_type_names[int(cancer_type)], survival,
                                 self.subtype_groups)

    def targets_for(self, sentences: Mapping[str, str]) -> dict[str, torch.Tensor]:
        """``{task: (1, out_dim)}`` projected text targets of one patient's ``sentences``
        (:meth:`clinical_sentences`)."""
        return text_targets(task_texts(sentences, self.tasks), self._encode_texts, self.projector)

    def fit_pretraining_corpus(self, clinical: Sequence[Mapping[str, str]]) -> None:
        """Fit the rare set of subtypes on the pretraining corpus (the fold's training patients only): subtypes
        of fewer than ``rare_subtype_min`` of them are written as their rare set."""
        self.subtype_groups = SubtypeGroups.fit([c.get("diagnosis") for c in clinical], self.rare_subtype_min)

    # -- pretraining ----------------------------------------------------------------------------------------

    def pretraining_loss(self, batch: PretrainBatch) -> dict[str, torch.Tensor]:
        """``kl`` (weighted) and ``loss`` over the batch's patients with a slide (see the module docstring)."""
        n = len(batch)
        if n < 1:
            raise ModelInputError(f"model '{self.name}': an empty pretraining batch")
        types = torch.as_tensor(batch.cancer_type).reshape(-1).tolist()
        if len(types) != n:
            raise ModelInputError(f"model '{self.name}': {n} patients but {len(types)} cancer types")
        bins = None if batch.bins is None else torch.as_tensor(batch.bins).reshape(-1).tolist()
        events = None if batch.events is None else torch.as_tensor(batch.events).reshape(-1).tolist()
        for what, values in (("bins", bins), ("events", events)):
            if values is not None and len(values) != n:
                raise ModelInputError(f"model '{self.name}': {n} patients but {len(values)} {what}")
        preds: dict[str, list[torch.Tensor]] = {}
        targs: dict[str, list[torch.Tensor]] = {}
        for i, x in enumerate(batch.inputs):
            if x.wsi is None:
                continue
            if not 0 <= int(types[i]) < len(self.cancer_type_names):
                raise ModelInputError(f"model '{self.name}': cancer_type {int(types[i])} outside [0, "
                                      f"{len(self.cancer_type_names) - 1}]")
            clinical = None if batch.clinical is None else batch.clinical[i]
            sentences = self.clinical_sentences(int(types[i]), None if bins is None else bins[i],
                                                None if events is None else events[i], batch.time_edges, clinical)
            targets = self.targets_for(sentences)
            embeddings = self(x).extras["task_embeddings"]
            for t, y in targets.items():
                preds.setdefault(t, []).append(embeddings[t])
                targs.setdefault(t, []).append(y)
        if preds:
            kl = multitask_kl({t: torch.cat(v) for t, v in preds.items()},
                              {t: torch.cat(v) for t, v in targs.items()}, self.temperature)
        else:  # no patient with a slide: nothing to distil, keep a graph for backward()
            kl = self.prompts.sum() * 0.0
        kl = self.kl_weight * kl
        return {"kl": kl, "loss": kl}
