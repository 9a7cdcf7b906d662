"""MICE: per-modality encoders, cancer-type-conditioned synthesis of absent modalities and collaborative
(consensual, cancer-type-specialized, routed overlapping) experts fused by a small transformer, for pan-cancer
survival with missing modalities (the ``mice`` model).

Holds :func:`expert_mlp`, :class:`OverlappingExperts` and :class:`MICE` with its pretraining loss.

Paper: MICE, multimodal integration via collaborative experts, arXiv 2509.12600.
Paper-to-code mapping and deviations: docs/methods/mice.md
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pathmm_pipeline.models.base import (
    MODALITIES,
    InputDims,
    ModelConfigError,
    ModelInputError,
    ModelOutput,
    PathmmModel,
    PatientInput,
    PretrainBatch,
    TaskSpec,
)
from pathmm_pipeline.models.layers import AttentionPool, mlp, snn
from pathmm_pipeline.models.losses import nll_survival_loss
from pathmm_pipeline.models.mamba import MambaMIL
from pathmm_pipeline.models.moe import MixtureOfExperts, RoutingStats, routing_stats
from pathmm_pipeline.models.objectives import symmetric_info_nce
from pathmm_pipeline.models.registry import register_model

#: CLIP's initial inverse temperature, log(1 / 0.07), and its clamp, log(100)
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


def expert_mlp(d_in: int, hidden: int, d_out: int, dropout: float = 0.25) -> nn.Sequential:
    """One collaborative expert: ``Linear(d_in, hidden) -> GELU -> Dropout -> Linear(hidden, d_out)``."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


def mix_routed(moe: MixtureOfExperts, inputs: torch.Tensor, probs: torch.Tensor, gates: torch.Tensor,
               indices: torch.Tensor) -> tuple[torch.Tensor, RoutingStats]:
    """The gated sum of the routed experts' outputs for each row of ``inputs`` (its ``top_k`` experts from
    ``indices``, weighted by ``gates``), (B, moe.d_out), and the routing's :class:`RoutingStats`."""
    out = inputs.new_zeros(inputs.shape[0], moe.d_out)
    for e, expert in enumerate(moe.experts):
        row, slot = (indices == e).nonzero(as_tuple=True)
        if row.numel():
            out = out.index_add(0, row, gates[row, slot, None] * expert(inputs[row]))
    return out, routing_stats(probs, indices)


class OverlappingExperts(MixtureOfExperts):
    """:class:`~pathmm_pipeline.models.moe.MixtureOfExperts` whose experts map ``d_in -> d_out`` (the MoE of
    ``moe.py`` keeps the width): same router (``W_g [x; context]``, optional noise, top-k softmax gates), same
    :class:`RoutingStats`. (T, d_in) and context (T, context_dim) -> (T, d_out). (The parent's width-keeping
    experts are built, then replaced by :func:`expert_mlp` ones.)"""

    def __init__(self, d_in: int, d_out: int, hidden: int, n_experts: int, top_k: int = 2, noisy: bool = True,
                 dropout: float = 0.25, context_dim: int = 0) -> None:
        super().__init__(d_in, hidden, n_experts, top_k=top_k, noisy=noisy, dropout=dropout,
                         context_dim=context_dim)
        self.experts = nn.ModuleList(expert_mlp(d_in, hidden, d_out, dropout) for _ in range(n_experts))
        self.d_out = d_out

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, RoutingStats]:
        return mix_routed(self, x, *self.route(x, context))


class TokenExpert(nn.Module):
    """A collaborative expert as the paper builds it: a pre-norm Transformer block over the patient's modality
    tokens (B, M, dim), so that the modalities interact token by token inside the expert, then the mean over the
    tokens -> (B, dim)."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float = 0.25) -> None:
        super().__init__()
        self.block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=hidden, dropout=dropout,
                                                activation="gelu", batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.block(tokens)).mean(dim=1)


class OverlappingTokenExperts(MixtureOfExperts):
    """Routed overlapping experts over modality tokens: the router (``W_g [mean token; context]``, optional noise,
    top-k softmax gates) picks ``top_k`` of ``n_experts`` :class:`TokenExpert` s per patient. (B, M, dim) and
    context (B, context_dim) -> (B, dim) and :class:`RoutingStats`."""

    def __init__(self, dim: int, heads: int, hidden: int, n_experts: int, top_k: int = 2, noisy: bool = True,
                 dropout: float = 0.25, context_dim: int = 0) -> None:
        super().__init__(dim, hidden, n_experts, top_k=top_k, noisy=noisy, dropout=dropout, context_dim=context_dim)
        self.experts = nn.ModuleList(TokenExpert(dim, heads, hidden, dropout) for _ in range(n_experts))
        self.d_out = dim

    def forward(self, tokens: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, RoutingStats]:
        return mix_routed(self, tokens, *self.route(tokens.mean(dim=1), context))


EXPERT_FORMS = ("transformer", "mlp")
EXPERT_SETS = ("all", "consensual", "specialized", "routed")
SLIDE_ENCODERS = ("abmil", "mamba")


@register_model("mice")
class MICE(PathmmModel):
    """MICE: per-modality encoders, cancer-type-conditioned synthesis of absent modalities, consensual +
    cancer-type-specialized + routed overlapping experts, fused by a small transformer (see the module
    docstring).

    Options: ``dim`` (128), ``attn_dim`` (None: dim), ``snn_hidden`` (None: (dim, dim)), ``report_hidden``
    (None: (dim, dim)), ``expert_hidden`` (None: dim), ``n_overlap`` (4), ``top_k`` (2), ``noisy`` (True),
    ``fusion_layers`` (2), ``fusion_heads`` (4), ``dropout`` (0.25), ``moe_loss_weight`` (0.01),
    ``w_synthesis`` (1.0), ``alpha`` (2.0, contrastive weight), ``pretrain_bins`` (4, must match the
    pretraining's ``n_bins``), ``freeze_encoders`` (False), ``modalities`` (default: those the dims give),
    ``modality_dropout`` (0.0), ``experts`` ("transformer": each expert a Transformer block over the modality
    tokens, as the paper; "mlp": an MLP over their concatenation, this pipeline's earlier form), and the
    ablation switches ``expert_set`` ("all" | "consensual" | "specialized" | "routed": the experts whose outputs
    the fusion sees) and ``synthesis`` (True; False: an absent modality is a learned "missing" token instead of
    the cancer-type-conditioned synthesis, and no synthesis loss), ``slide_encoder`` ("abmil": gated attention
    MIL; "mamba": the paper's MambaMIL, :class:`~pathmm_pipeline.models.mamba.MambaMIL` with ``mamba_layers`` (2)
    selective state-space layers). Any non-empty subset of the modalities may be
    present. The embedding is the fused patient vector (dim).
    """

    uses = frozenset(MODALITIES)
    requires = frozenset()
    genomics_field = "genes"
    pretrainable = True
    batched = True

    def __init__(self, dims: InputDims, task: TaskSpec, dim: int = 128, attn_dim: int | None = None,
                 snn_hidden: Sequence[int] | None = None, report_hidden: Sequence[int] | None = None,
                 expert_hidden: int | None = None, n_overlap: int = 4, top_k: int = 2, noisy: bool = True,
                 fusion_layers: int = 2, fusion_heads: int = 4, dropout: float = 0.25,
                 moe_loss_weight: float = 0.01, w_synthesis: float = 1.0, alpha: float = 2.0,
                 pretrain_bins: int = 4, freeze_encoders: bool = False, modalities: Iterable[str] | None = None,
                 modality_dropout: float = 0.0, experts: str = "transformer", expert_set: str = "all",
                 synthesis: bool = True, slide_encoder: str = "abmil", mamba_layers: int = 2) -> None:
        if slide_encoder not in SLIDE_ENCODERS:
            raise ModelConfigError(f"model 'mice': slide_encoder must be one of {', '.join(SLIDE_ENCODERS)}, got "
                                   f"{slide_encoder!r}")
        if experts not in EXPERT_FORMS or expert_set not in EXPERT_SETS:
            raise ModelConfigError(f"model 'mice': experts must be one of {', '.join(EXPERT_FORMS)} and expert_set "
                                   f"one of {', '.join(EXPERT_SETS)}, got {experts!r} / {expert_set!r}")
        super().__init__(dims, task, modalities=self.modalities_from_dims(dims, modalities),
                         modality_dropout=modality_dropout)
        attn_dim = dim if attn_dim is None else attn_dim
        snn_hidden = (dim, dim) if snn_hidden is None else tuple(snn_hidden)
        report_hidden = (dim, dim) if report_hidden is None else tuple(report_hidden)
        expert_hidden = dim if expert_hidden is None else expert_hidden
        self._check_options(dim, snn_hidden, report_hidden, n_overlap, top_k, fusion_layers, fusion_heads,
                            dropout, moe_loss_weight, w_synthesis, alpha, pretrain_bins)
        self.order = [m for m in MODALITIES if m in self.modalities]
        self.dim = dim
        self.n_cancer_types = dims.n_cancer_types
        self.moe_loss_weight, self.w_synthesis, self.alpha = float(moe_loss_weight), float(w_synthesis), float(alpha)
        self.pretrain_bins = pretrain_bins
        self.experts, self.expert_set, self.use_synthesis = experts, expert_set, bool(synthesis)

        # -- encoders
        self.encoders = nn.ModuleDict()
        if "wsi" in self.modalities:
            d_in = self.need_dim(dims.wsi, "wsi", "wsi")
            if slide_encoder == "mamba":  # the paper's MambaMIL: selective state-space layers, then attention pooling
                self.encoders["wsi"] = MambaMIL(d_in, dim, attn_dim, mamba_layers, dropout=dropout)
            else:
                self.encoders["wsi"] = nn.ModuleDict({"fc": mlp(d_in, [dim], dropout),
                                                      "pool": AttentionPool(dim, attn_dim, dropout)})
        if "genomics" in self.modalities:
            self.encoders["genomics"] = snn(self.need_dim(dims.genes, "genes", "genomics (flat gene vector)"),
                                            snn_hidden, dropout)
        if "report" in self.modalities:
            self.encoders["report"] = mlp(self.need_dim(dims.report, "report", "report"), report_hidden, dropout)

        # -- missing-modality synthesis
        self.cancer_embedding = nn.Embedding(self.n_cancer_types, dim)
        self.synthesizers = nn.ModuleDict({m: nn.Sequential(snn(dim, [dim], dropout), nn.Linear(dim, dim))
                                           for m in self.order})

        # -- collaborative experts
        if experts == "transformer":
            self.modality_type = nn.Parameter(torch.randn(1, len(self.order), dim) * 0.02)
            self.consensual = TokenExpert(dim, fusion_heads, expert_hidden, dropout)
            self.specialized = nn.ModuleList(TokenExpert(dim, fusion_heads, expert_hidden, dropout)
                                             for _ in range(self.n_cancer_types))
            self.overlapping = OverlappingTokenExperts(dim, fusion_heads, expert_hidden, n_overlap, top_k=top_k,
                                                       noisy=noisy, dropout=dropout, context_dim=dim)
        else:
            width = len(self.order) * dim
            self.consensual = expert_mlp(width, expert_hidden, dim, dropout)
            self.specialized = nn.ModuleList(expert_mlp(width, expert_hidden, dim, dropout)
                                             for _ in range(self.n_cancer_types))
            self.overlapping = OverlappingExperts(width, dim, expert_hidden, n_overlap, top_k=top_k, noisy=noisy,
                                                  dropout=dropout, context_dim=dim)
        if not self.use_synthesis:
            self.missing_tokens = nn.Parameter(torch.zeros(len(self.order), dim))

        # -- fusion
        self.fusion_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.expert_type = nn.Parameter(torch.randn(1, 3, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, fusion_heads, dim_feedforward=2 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, fusion_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

        # -- heads
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.pretrain_head = nn.Linear(dim, pretrain_bins)
        self.classifier = nn.Linear(dim, task.n_outputs)
        self.embedding_dim = dim
        self.freeze_encoders = bool(freeze_encoders)
        if self.freeze_encoders:
            for p in self.encoders.parameters():
                p.requires_grad_(False)

    def _check_options(self, dim: int, snn_hidden: tuple[int, ...], report_hidden: tuple[int, ...],
                       n_overlap: int, top_k: int, fusion_layers: int, fusion_heads: int, dropout: float,
                       moe_loss_weight: float, w_synthesis: float, alpha: float, pretrain_bins: int) -> None:
        problems = []
        if dim < 1 or fusion_heads < 1 or dim % fusion_heads:
            problems.append(f"dim ({dim}) must be a positive multiple of fusion_heads ({fusion_heads})")
        if not snn_hidden or snn_hidden[-1] != dim or not report_hidden or report_hidden[-1] != dim:
            problems.append(f"snn_hidden {snn_hidden} and report_hidden {report_hidden} must end at dim={dim}")
        if n_overlap < 1 or not 1 <= top_k <= n_overlap:
            problems.append(f"need n_overlap >= 1 and 1 <= top_k <= n_overlap, got n_overlap={n_overlap}, "
                            f"top_k={top_k}")
        if fusion_layers < 1:
            problems.append(f"fusion_layers must be >= 1, got {fusion_layers}")
        if not 0.0 <= dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {dropout}")
        for what, value in (("moe_loss_weight", moe_loss_weight), ("w_synthesis", w_synthesis), ("alpha", alpha)):
            if not value >= 0.0:
                problems.append(f"{what} must be >= 0, got {value}")
        if pretrain_bins < 1:
            problems.append(f"pretrain_bins must be >= 1, got {pretrain_bins}")
        if problems:
            raise ModelConfigError(f"model '{self.name}': " + "; ".join(problems))

    # -- building blocks ------------------------------------------------------------------------------------

    def cancer_types(self, cancer_type: int | torch.Tensor) -> torch.Tensor:
        """(B,) long type indices on the model's device; ModelInputError when one is outside the dims' types."""
        t = torch.as_tensor(cancer_type, device=self._ref().device).long().reshape(-1)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.n_cancer_types):
            raise ModelInputError(f"model '{self.name}': cancer_type {t.tolist()} outside [0, "
                                  f"{self.n_cancer_types - 1}] -- the model was built for "
                                  f"InputDims.n_cancer_types={self.n_cancer_types}")
        return t

    def encode(self, x: PatientInput, present: dict[str, bool]) -> tuple[dict[str, torch.Tensor], dict]:
        """The real (1, dim) embedding of each present modality, and extras (``attention`` of the wsi pool)."""
        real, extras = self.encode_batch([x], [present])
        return real[0], extras[0]

    def synthesize(self, types: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, dim) stand-in embeddings of every modality, from the cancer-type embeddings of ``types`` (B,); with
        ``synthesis`` off, the learned "missing" token of each modality instead."""
        if not self.use_synthesis:
            return {m: self.missing_tokens[i].expand(types.shape[0], -1) for i, m in enumerate(self.order)}
        c = self.cancer_embedding(types)
        return {m: self.synthesizers[m](c) for m in self.order}

    def fuse(self, embeddings: torch.Tensor, types: torch.Tensor) -> tuple[torch.Tensor, RoutingStats]:
        """``embeddings`` (B, M, dim) (real or synthesised, in ``self.order``) and ``types`` (B,) -> the patient
        embeddings (B, dim) and the overlapping experts' routing."""
        b = embeddings.shape[0]
        z = embeddings + self.modality_type if self.experts == "transformer" else embeddings.reshape(b, -1)
        c = self.cancer_embedding(types)
        consensual = self.consensual(z)
        specialized = consensual.new_zeros(b, self.dim)
        for t in torch.unique(types).tolist():
            rows = (types == t).nonzero(as_tuple=True)[0]
            specialized = specialized.index_copy(0, rows, self.specialized[t](z[rows]))
        overlapping, stats = self.overlapping(z, c)
        keep = {"all": [0, 1, 2], "consensual": [0], "specialized": [1], "routed": [2]}[self.expert_set]
        outputs = torch.stack([consensual, specialized, overlapping], dim=1) + self.expert_type
        tokens = torch.cat([self.fusion_token.expand(b, -1, -1), outputs[:, keep]], dim=1)
        h = self.norm(self.fusion(tokens)[:, 0])
        return h, stats

    @staticmethod
    def synthesis_loss(real: dict[str, torch.Tensor], synth: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """MSE between stand-ins and the detached real embeddings over the modalities in ``real`` (rows
        aligned); None when ``real`` is empty."""
        if not real:
            return None
        pred = torch.cat([synth[m] for m in real])
        target = torch.cat([real[m].detach() for m in real])
        return F.mse_loss(pred, target)

    # -- forward -------------------------------------------------------------------------------------------

    def forward(self, x: PatientInput) -> ModelOutput:
        return self.forward_batch([x])[0]

    def encode_batch(self, xs: Sequence[PatientInput], presents: Sequence[dict[str, bool]]
                     ) -> tuple[list[dict[str, torch.Tensor]], list[dict]]:
        """:meth:`encode` of several patients: the slides' gated attention pooling as one pass over their
        concatenated tiles (a softmax per slide), genomics and report each as one call over the patients that
        have it."""
        real: list[dict[str, torch.Tensor]] = [{} for _ in xs]
        extras: list[dict] = [{} for _ in xs]
        enc = self.encoders
        for m in self.order:
            rows = [i for i, p in enumerate(presents) if p[m]]
            if not rows:
                continue
            if m == "wsi" and isinstance(enc["wsi"], MambaMIL):
                for i in rows:
                    real[i][m], extras[i]["attention"] = enc["wsi"](self.wsi_features(xs[i]))
            elif m == "wsi":
                bags = [self.wsi_features(xs[i]) for i in rows]
                pooled, weights = enc["wsi"]["pool"].forward_segments(enc["wsi"]["fc"](torch.cat(bags)),
                                                                      [b.shape[0] for b in bags])
                for j, i in enumerate(rows):
                    real[i][m], extras[i]["attention"] = pooled[j:j + 1], weights[j]
            else:
                read = self.gene_vector if m == "genomics" else self.report_vector
                out = enc[m](torch.cat([read(xs[i]) for i in rows]))
                for j, i in enumerate(rows):
                    real[i][m] = out[j:j + 1]
        return real, extras

    def forward_batch(self, xs: Sequence[PatientInput]) -> list[ModelOutput]:
        """Several patients at once: the encoders as in :meth:`encode_batch`, synthesis, experts and fusion over
        the (B, M, dim) modality tokens; each patient's ``aux_loss`` and routing are its own rows' (so each output
        equals :meth:`forward` on that patient alone, to float rounding, where no random draw is involved)."""
        presents = [self.check_input(x) for x in xs]
        types = self.cancer_types([int(x.cancer_type) for x in xs])
        real, extras = self.encode_batch(xs, presents)
        synth = self.synthesize(types)
        embeddings = torch.stack([torch.stack([real[i][m][0] if m in real[i] else synth[m][i] for m in self.order])
                                  for i in range(len(xs))])
        h, stats = self.fuse(embeddings, types)
        logits = self.classifier(h)
        outputs = []
        for i, present in enumerate(presents):
            own = stats.rows(i, i + 1)
            aux = self.moe_loss_weight * own.load_balance
            if self.training and self.use_synthesis:
                mse = self.synthesis_loss(real[i], {m: synth[m][i:i + 1] for m in real[i]})
                if mse is not None:
                    aux = aux + self.w_synthesis * mse
            extras[i].update(present=present, missing=[m for m in self.order if not present[m]],
                             router_load=own.load, router_indices=own.indices, router_entropy=own.entropy,
                             aux_loss=aux)
            outputs.append(ModelOutput(logits[i:i + 1], h[i:i + 1], extras[i]))
        return outputs

    # -- pretraining ---------------------------------------------------------------------------------------

    def pretraining_loss(self, batch: PretrainBatch) -> dict[str, torch.Tensor]:
        """``survival``, ``contrastive``, ``synthesis``, ``moe`` (each already weighted) and ``loss`` (their sum)
        on a pan-cancer batch (see the module docstring). Cancer types come from ``batch.cancer_type``."""
        n = len(batch)
        if n < 1:
            raise ModelInputError(f"model '{self.name}': an empty pretraining batch")
        types = self.cancer_types(batch.cancer_type)
        if types.numel() != n:
            raise ModelInputError(f"model '{self.name}': {n} patients but {types.numel()} cancer types")
        presents = [self.check_input(x) for x in batch.inputs]
        reals, _ = self.encode_batch(batch.inputs, presents)  # the slides as one padded pass
        synth = self.synthesize(types)  # (B, dim) each
        embeddings = torch.stack([torch.stack([reals[i][m][0] if m in reals[i] else synth[m][i] for m in self.order])
                                  for i in range(n)])
        h, stats = self.fuse(embeddings, types)
        zero = h.sum() * 0.0

        # supervised survival on the patients with a known bin and event
        survival = zero
        if batch.bins is not None and batch.events is not None:
            bins = torch.as_tensor(batch.bins, device=h.device).reshape(-1).long()
            events = torch.as_tensor(batch.events, device=h.device).reshape(-1)
            if bins.numel() != n or events.numel() != n:
                raise ModelInputError(f"model '{self.name}': {n} patients but {bins.numel()} bins and "
                                      f"{events.numel()} events")
            known = (bins >= 0) & ((events == 0) | (events == 1))
            if bool(known.any()):
                if int(bins[known].max()) >= self.pretrain_bins:
                    raise ModelInputError(f"model '{self.name}': survival bin {int(bins[known].max())} >= "
                                          f"pretrain_bins={self.pretrain_bins} -- set the model option "
                                          f"pretrain_bins to the pretraining's number of bins")
                survival = nll_survival_loss(self.pretrain_head(h[known]), bins[known], events[known])

        # contrastive alignment of the real embeddings, per modality pair
        scale = self.logit_scale.clamp(max=LOGIT_SCALE_MAX)
        pair_losses = []
        for a, b in itertools.combinations(self.order, 2):
            rows = [i for i in range(n) if a in reals[i] and b in reals[i]]
            if len(rows) >= 2:
                ea = torch.cat([reals[i][a] for i in rows])
                eb = torch.cat([reals[i][b] for i in rows])
                pair_losses.append(symmetric_info_nce(ea, eb, scale))
        contrastive = torch.stack(pair_losses).mean() if pair_losses else zero

        # synthesis of every present (patient, modality) from the cancer type
        per_modality = {m: [i for i in range(n) if m in reals[i]] for m in self.order}
        real_rows = {m: torch.cat([reals[i][m] for i in rows]) for m, rows in per_modality.items() if rows}
        synth_rows = {m: synth[m][per_modality[m]] for m in real_rows}
        mse = self.synthesis_loss(real_rows, synth_rows) if self.use_synthesis else None
        synthesis = zero if mse is None else mse

        terms = {"survival": survival, "contrastive": self.alpha * contrastive,
                 "synthesis": self.w_synthesis * synthesis, "moe": self.moe_loss_weight * stats.load_balance}
        terms["loss"] = terms["survival"] + terms["contrastive"] + terms["synthesis"] + terms["moe"]
        return terms
