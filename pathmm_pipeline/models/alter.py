"""ALTER: any-to-any tri-modal pretraining on WSIs, genomics and reports (the ``alter`` model).

Holds the region-pooled TransMIL WSI encoder (:class:`RegionWSIEncoder`), the Performer (FAVOR+) gene encoder
with pathway pooling (:class:`PathwayGeneEncoder`), the universal transformer (:class:`UniversalBlock`: shared
self-attention + per-modality mixture of experts) and :class:`ALTER` with its pretraining loss (masked
modelling + pairwise InfoNCE + cancer-type triplet + MoE balance).

Paper: Sun et al., arXiv 2505.12711.
Paper-to-code mapping and deviations: docs/methods/alter.md
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

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
from pathmm_pipeline.models.moe import Expert, MixtureOfExperts, RoutingStats
from pathmm_pipeline.models.objectives import mask_tokens, masked_token_loss, symmetric_info_nce, triplet_margin_loss
from pathmm_pipeline.models.padded import rowwise
from pathmm_pipeline.models.performer import PerformerLayer
from pathmm_pipeline.models.registry import register_model
from pathmm_pipeline.models.transmil import PPEG, TransLayer, padded_square_tokens, square_pad

MASKINGS = ("inputs", "tokens")
FUSION_MODES = ("both", "shared_only", "moe_only")


# ---------------------------------------------------------------------------------------------- pooling


def group_mean(values: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(N, D) values, (N,) group index in [0, n_groups) -> (n_groups, D) the mean of each group (0 if empty)."""
    sums = values.new_zeros(n_groups, values.shape[-1]).index_add_(0, group, values)
    counts = torch.bincount(group, minlength=n_groups).clamp_min(1).to(values.dtype)
    return sums / counts.unsqueeze(-1)


def grid_positions(coords: torch.Tensor | None, n: int) -> torch.Tensor:
    """(n, 2) integer (row, column) grid cells of n patches.

    From level-0 ``coords`` (n, 2) as (x, y): the offset from the smallest x (y) divided by the grid step,
    rounded. The step is the smallest positive difference between distinct x coordinates or between distinct y
    coordinates (one step for both axes: tiles are square), so gaps in the tissue do not stretch an axis.
    Without coordinates: bag order as a raster of ceil(sqrt(n)) columns.
    """
    if coords is None:
        width = max(1, math.ceil(math.sqrt(n)))
        i = torch.arange(n)
        return torch.stack([i // width, i % width], dim=1)
    c = coords.reshape(-1, coords.shape[-1]) if coords.dim() >= 2 else coords
    if c.dim() != 2 or c.shape != (n, 2):
        raise ModelInputError(f"wsi_coords has shape {tuple(coords.shape)}, expected ({n}, 2): one level-0 (x, y) "
                              f"per patch of wsi (or None to lay the patches out in bag order)")
    c = c.detach().to("cpu", torch.float64)
    gaps = torch.cat([torch.unique(c[:, axis]).diff() for axis in (0, 1)])  # between sorted distinct x; y
    step = gaps.min() if gaps.numel() else torch.tensor(1.0, dtype=torch.float64)
    rc = c[:, [1, 0]]                                              # (y, x) -> (row, column)
    return torch.round((rc - rc.min(dim=0).values) / step).long()


def region_pool(tokens: torch.Tensor, cells: torch.Tensor, region_size: int, max_regions: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Average ``tokens`` (N, D) over non-overlapping ``region_size`` x ``region_size`` regions of their grid
    ``cells`` (N, 2) (row, column; from :func:`grid_positions`).

    Returns ``(regions (R, D), region_of (N,), side)``: one token per non-empty region in raster order (by
    region row, then column), each patch's region, and the region side used -- ``region_size``, doubled until
    at most ``max_regions`` regions are non-empty.
    """
    if region_size < 1:
        raise ValueError(f"region_size must be >= 1, got {region_size}")
    cells = cells.to(tokens.device).long()
    cells = cells - cells.min(dim=0).values
    side = region_size
    while True:
        region = torch.div(cells, side, rounding_mode="floor")
        key = region[:, 0] * (int(region[:, 1].max()) + 1) + region[:, 1]
        unique, region_of = torch.unique(key, sorted=True, return_inverse=True)
        if max_regions is None or unique.numel() <= max_regions:
            break
        side *= 2
    return group_mean(tokens, region_of, unique.numel()), region_of, side


def pathway_pool(tokens: torch.Tensor, members: Sequence[Sequence[int]]) -> torch.Tensor:
    """(G, D) gene tokens -> (P, D): the mean of each pathway's gene tokens (``members``: gene indices)."""
    index, group = _membership(members)
    return group_mean(tokens[index.to(tokens.device)], group.to(tokens.device), len(members))


def _membership(members: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    index = torch.tensor([g for m in members for g in m], dtype=torch.long)
    group = torch.tensor([p for p, m in enumerate(members) for _ in m], dtype=torch.long)
    return index, group


# ---------------------------------------------------------------------------------------------- encoders


class RegionWSIEncoder(nn.Module):
    """Patch features (N, D_wsi) and coordinates -> region tokens (R, dim) (see the module docstring)."""

    def __init__(self, d_in: int, dim: int, heads: int, dropout: float, region_size: int, max_regions: int) -> None:
        super().__init__()
        self.region_size, self.max_regions = region_size, max_regions
        self.fc = nn.Sequential(nn.Linear(d_in, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1 = TransLayer(dim=dim, heads=heads, dropout=dropout)
        self.pos_layer = PPEG(dim)
        self.layer2 = TransLayer(dim=dim, heads=heads, dropout=dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: torch.Tensor, coords: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """``(regions (R, dim), region side used)``."""
        regions, side, _ = self.encode(features, coords)
        return regions, side

    def encode(self, features: torch.Tensor, coords: torch.Tensor | None, mask: torch.Tensor | None = None,
               mask_embedding: torch.Tensor | None = None) -> tuple[torch.Tensor, int, torch.Tensor]:
        """``(regions (R, dim), region side, per-patch states (N, dim))``; with ``mask`` (N,) bool the masked
        patches enter the encoder as ``mask_embedding`` (1, dim) instead of their projected features."""
        n = features.shape[0]
        cells = grid_positions(coords, n)
        h = self.fc(features)
        if mask is not None:
            h = torch.where(mask[:, None], mask_embedding.to(h.dtype), h)
        h, side_h, side_w = square_pad(h.unsqueeze(0))
        h = torch.cat([self.cls_token.to(h.dtype), h], dim=1)
        h = self.layer2(self.pos_layer(self.layer1(h), side_h, side_w))
        h = self.norm(h)[0, 1:n + 1]                            # drop the encoder CLS and the square padding
        regions, _, side = region_pool(h, cells, self.region_size, self.max_regions)
        return regions, side, h

    def encode_batch(self, features: Sequence[torch.Tensor], coords: Sequence[torch.Tensor | None]
                     ) -> list[tuple[torch.Tensor, int]]:
        """``(regions, region side)`` of several bags, the Nystrom encoder run once on them as a padded batch
        (:func:`~pathmm_pipeline.models.transmil.padded_square_tokens`): each what :meth:`forward` gives alone."""
        cells = [grid_positions(c, int(f.shape[0])) for f, c in zip(features, coords)]
        bags = rowwise(self.fc, features)
        h, mask, sides = padded_square_tokens(bags, self.cls_token)
        h = self.norm(self.layer2(self.pos_layer.forward_padded(self.layer1(h, mask), sides), mask))
        out = []
        for i, bag in enumerate(bags):
            regions, _, side = region_pool(h[i, 1:bag.shape[0] + 1], cells[i], self.region_size, self.max_regions)
            out.append((regions, side))
        return out


class PathwayGeneEncoder(nn.Module):
    """Expression (G,) -> gene tokens -> Performer layers -> pathway tokens (P, dim)."""

    def __init__(self, n_genes: int, members: Sequence[Sequence[int]], dim: int, heads: int, n_features: int,
                 layers: int, dropout: float) -> None:
        super().__init__()
        self.gene_embedding = nn.Embedding(n_genes, dim)
        self.value = nn.Linear(1, dim)                          # value * w + b
        self.layers = nn.ModuleList(PerformerLayer(dim, heads, n_features, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        index, group = _membership(members)
        self.n_pathways = len(members)
        self.register_buffer("member_index", index, persistent=False)
        self.register_buffer("member_group", group, persistent=False)

    def gene_tokens(self, genes: torch.Tensor) -> torch.Tensor:
        """(G,) -> (G, dim): gene-id embedding + value embedding."""
        return self.gene_embedding.weight + self.value(genes.reshape(-1, 1))

    def forward(self, genes: torch.Tensor) -> torch.Tensor:
        return self.encode(genes)[0]

    def encode(self, genes: torch.Tensor, mask: torch.Tensor | None = None,
               mask_embedding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pathway tokens (P, dim), per-gene states (G, dim))``; with ``mask`` (G,) bool the masked genes keep
        their gene-id embedding but their value embedding is ``mask_embedding`` (1, dim): the value is hidden."""
        tokens = self.gene_tokens(genes)
        if mask is not None:
            hidden = self.gene_embedding.weight + mask_embedding.to(tokens.dtype)
            tokens = torch.where(mask[:, None], hidden, tokens)
        h = tokens.unsqueeze(0)
        for layer in self.layers:
            h = layer(h)
        h = self.norm(h)[0]
        return group_mean(h[self.member_index], self.member_group, self.n_pathways), h


# ---------------------------------------------------------------------------------------------- fusion


class UniversalBlock(nn.Module):
    """Pre-norm shared multi-head self-attention, then a per-modality mixture-of-experts FFN (or one dense FFN
    shared by all modalities when ``mode == "shared_only"``)."""

    def __init__(self, dim: int, heads: int, ff_dim: int, modalities: Sequence[str], mode: str, n_experts: int,
                 top_k: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = Expert(dim, ff_dim, dropout) if mode == "shared_only" else None
        self.moe = (None if mode == "shared_only" else
                    nn.ModuleDict({m: MixtureOfExperts(dim, ff_dim, n_experts, top_k, dropout=dropout)
                                   for m in modalities}))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, segments: Sequence[tuple[str, int, int]],
                attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, list[RoutingStats]]:
        """``h`` (1, T, dim); ``segments`` (modality, start, end) covering the T tokens."""
        a = self.norm1(h)
        h = h + self.drop(self.attn(a, a, a, attn_mask=attn_mask, need_weights=False)[0])
        f = self.norm2(h)[0]
        stats: list[RoutingStats] = []
        if self.moe is None:
            out = self.ffn(f)  # type: ignore[misc]
        else:
            parts = []
            for m, start, end in segments:
                part, routed = self.moe[m](f[start:end])
                parts.append(part)
                stats.append(routed)
            out = torch.cat(parts)
        return h + self.drop(out).unsqueeze(0), stats


@dataclass
class Fused:
    """One pass of the universal transformer: ``cls`` (1, dim) per modality, ``states`` (T_m, dim) the
    outputs at each modality's tokens, ``embedding`` (1, dim) the mean [CLS], and the MoE routing stats."""

    cls: dict[str, torch.Tensor]
    states: dict[str, torch.Tensor]
    embedding: torch.Tensor
    stats: list[RoutingStats] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- the model


@register_model("alter")
class ALTER(PathmmModel):
    """ALTER on any non-empty subset of wsi, genomics (``genes`` + the cohort's pathways) and report tokens.

    Options: ``dim`` (256), ``heads`` (4: fusion attention, Nystrom and Performer layers), ``layers`` (2:
    universal-transformer blocks), ``fusion_mode`` ("both" | "shared_only" | "moe_only"), ``n_experts`` (4),
    ``top_k`` (2), ``ff_dim`` (4 * dim: hidden width of each expert / the dense FFN), ``moe_loss_weight``
    (0.01), ``dropout`` (0.1), ``region_size`` (4), ``max_regions`` (512), ``n_features`` (64: FAVOR+ random
    features), ``gene_layers`` (1: Performer layers), pretraining: ``w_masked`` (1.0), ``w_contrastive`` (1.0),
    ``w_triplet`` (1.0), ``mask_ratio`` (0.25), ``triplet_margin`` (0.3), ``masking`` ("inputs": patches,
    gene values and report tokens masked at the encoders' inputs and their raw values reconstructed -- patches
    and genes from their encoder's per-item states, report tokens from the fused report states; "tokens": this
    pipeline's earlier form, fused tokens masked and regressed onto the model's own detached tokens);
    ``modalities`` (default: those the dims give) and ``modality_dropout`` (0.0). The embedding is the mean of the
    [CLS] outputs (dim).
    """

    uses = frozenset(MODALITIES)
    requires = frozenset()
    genomics_field = "genes"
    pretrainable = True
    batched = True

    def __init__(self, dims: InputDims, task: TaskSpec, dim: int = 256, heads: int = 4, layers: int = 2,
                 fusion_mode: str = "both", n_experts: int = 4, top_k: int = 2, ff_dim: int | None = None,
                 moe_loss_weight: float = 0.01, dropout: float = 0.1, region_size: int = 4, max_regions: int = 512,
                 n_features: int = 64, gene_layers: int = 1, w_masked: float = 1.0, w_contrastive: float = 1.0,
                 w_triplet: float = 1.0, mask_ratio: float = 0.25, triplet_margin: float = 0.3,
                 modalities: Iterable[str] | None = None, modality_dropout: float = 0.0,
                 masking: str = "inputs") -> None:
        if masking not in MASKINGS:
            raise ModelConfigError(f"model 'alter': masking must be one of {', '.join(MASKINGS)}, got {masking!r}")
        super().__init__(dims, task, modalities=self.modalities_from_dims(dims, modalities),
                         modality_dropout=modality_dropout)
        self._check_options(dim=dim, heads=heads, layers=layers, fusion_mode=fusion_mode, n_experts=n_experts,
                            top_k=top_k, ff_dim=ff_dim, moe_loss_weight=moe_loss_weight, dropout=dropout,
                            region_size=region_size, max_regions=max_regions, n_features=n_features,
                            gene_layers=gene_layers, weights=(w_masked, w_contrastive, w_triplet),
                            mask_ratio=mask_ratio, triplet_margin=triplet_margin)
        self.order = [m for m in MODALITIES if m in self.modalities]
        self.masking = masking
        self.fusion_mode = fusion_mode
        self.moe_loss_weight = float(moe_loss_weight)
        self.w_masked, self.w_contrastive, self.w_triplet = float(w_masked), float(w_contrastive), float(w_triplet)
        self.mask_ratio, self.triplet_margin = float(mask_ratio), float(triplet_margin)

        self.encoders = nn.ModuleDict()
        if "wsi" in self.modalities:
            self.encoders["wsi"] = RegionWSIEncoder(self.need_dim(dims.wsi, "wsi", "wsi"), dim, heads, dropout,
                                                    region_size, max_regions)
        if "genomics" in self.modalities:
            n_genes = self.need_dim(dims.genes, "genes", "genomics (flat gene vector)")
            if dims.pathway_members is None:
                raise ModelConfigError(
                    f"model '{self.name}' pools its gene tokens into pathways, but InputDims.pathway_members is "
                    f"None -- the cohort needs a pathway collection (MultimodalCohort(pathway_collection=..., "
                    f"e.g. 'survpath')), or build the model without genomics (modalities=[...])")
            empty = [p for p, m in enumerate(dims.pathway_members) if not m]
            if not dims.pathway_members or empty:
                raise ModelConfigError(f"model '{self.name}': pathway {empty[0] if empty else 0} of "
                                       f"InputDims.pathway_members has no gene; every pathway needs at least one")
            self.encoders["genomics"] = PathwayGeneEncoder(n_genes, dims.pathway_members, dim, heads, n_features,
                                                           gene_layers, dropout)
        if "report" in self.modalities:
            self.encoders["report"] = nn.Linear(self.need_dim(dims.report, "report", "report"), dim)

        self.cls_tokens = nn.ParameterDict({m: nn.Parameter(torch.randn(1, dim) * 0.02) for m in self.order})
        self.type_embeddings = nn.ParameterDict({m: nn.Parameter(torch.randn(1, dim) * 0.02) for m in self.order})
        self.blocks = nn.ModuleList(UniversalBlock(dim, heads, ff_dim or 4 * dim, self.order, fusion_mode, n_experts,
                                                   top_k, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        # pretraining only
        self.mask_token = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.decoders = nn.ModuleDict({m: nn.Linear(dim, dim) for m in self.order})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

        self.classifier = nn.Linear(dim, task.n_outputs)
        self.dim = dim
        self.embedding_dim = dim
        # input-level masked modelling (pretraining only): what a masked patch / gene value / report token enters
        # its encoder as, and the heads that reconstruct the raw inputs; drawn from a stream of their own so that
        # the rest of the model starts as it does without them
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed() + 2)
            widths = {"wsi": (dim, dims.wsi), "genomics": (dim, 1), "report": (dims.report, dims.report)}
            self.input_masks = nn.ParameterDict({m: nn.Parameter(torch.randn(1, widths[m][0]) * 0.02)
                                                 for m in self.order})
            self.input_decoders = nn.ModuleDict({m: nn.Linear(dim, widths[m][1]) for m in self.order})

    def _check_options(self, *, dim: int, heads: int, layers: int, fusion_mode: str, n_experts: int, top_k: int,
                       ff_dim: int | None, moe_loss_weight: float, dropout: float, region_size: int,
                       max_regions: int, n_features: int, gene_layers: int, weights: tuple[float, ...],
                       mask_ratio: float, triplet_margin: float) -> None:
        problems = []
        if fusion_mode not in FUSION_MODES:
            problems.append(f"fusion_mode {fusion_mode!r} is not one of {', '.join(FUSION_MODES)}")
        if dim < 1 or heads < 1 or dim % heads:
            problems.append(f"dim ({dim}) must be a positive multiple of heads ({heads})")
        for name, value in (("layers", layers), ("n_experts", n_experts), ("region_size", region_size),
                            ("max_regions", max_regions), ("n_features", n_features), ("gene_layers", gene_layers)):
            if value < 1:
                problems.append(f"{name} must be >= 1, got {value}")
        if not 1 <= top_k <= max(n_experts, 1):
            problems.append(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
        if ff_dim is not None and ff_dim < 1:
            problems.append(f"ff_dim must be >= 1 (or None for 4 * dim), got {ff_dim}")
        if not 0.0 <= dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {dropout}")
        if not 0.0 < mask_ratio < 1.0:
            problems.append(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if min(*weights, moe_loss_weight, triplet_margin) < 0:
            problems.append("w_masked, w_contrastive, w_triplet, moe_loss_weight and triplet_margin must be >= 0")
        if problems:
            raise ModelConfigError(f"model '{self.name}': " + "; ".join(problems))

    # -- encoding and fusion -------------------------------------------------------------------------------

    def encode(self, x: PatientInput, present: dict[str, bool], wsi: tuple[torch.Tensor, int] | None = None
               ) -> tuple[dict[str, torch.Tensor], dict]:
        """The tokens (T_m, dim) of each present modality, and extras (the WSI region side and token counts);
        ``wsi``: the slide's ``(regions, side)`` when already encoded (:meth:`forward_batch`)."""
        tokens: dict[str, torch.Tensor] = {}
        info: dict = {}
        for m in self.order:
            if not present.get(m):
                continue
            if m == "wsi":
                tokens[m], info["region_size"] = (wsi if wsi is not None else
                                                  self.encoders["wsi"](self.wsi_features(x), x.wsi_coords))
            elif m == "genomics":
                tokens[m] = self.encoders["genomics"](self.gene_vector(x)[0])
            else:
                text = x.report_tokens if x.report_tokens is not None else x.report
                tokens[m] = self.encoders["report"](self.as_input(text.reshape(-1, text.shape[-1])))  # type: ignore
        info["n_tokens"] = {m: int(t.shape[0]) for m, t in tokens.items()}
        return tokens, info

    def fuse(self, tokens: dict[str, torch.Tensor]) -> Fused:
        """One pass of the universal transformer over the given modalities' tokens (any non-empty subset)."""
        order = [m for m in self.order if m in tokens]
        sequences, segments, start = [], [], 0
        for m in order:
            seq = torch.cat([self.cls_tokens[m], tokens[m]]) + self.type_embeddings[m]
            segments.append((m, start, start + seq.shape[0]))
            sequences.append(seq)
            start += seq.shape[0]
        h = torch.cat(sequences).unsqueeze(0)
        mask = None
        if self.fusion_mode == "moe_only" and len(order) > 1:
            seg = torch.cat([torch.full((e - s,), i, device=h.device) for i, (_, s, e) in enumerate(segments)])
            mask = seg[:, None] != seg[None, :]                 # True: may not attend
        stats: list[RoutingStats] = []
        for block in self.blocks:
            h, routed = block(h, segments, mask)
            stats += routed
        h = self.norm(h)[0]
        cls = {m: h[s:s + 1] for m, s, _ in segments}
        states = {m: h[s + 1:e] for m, s, e in segments}
        embedding = torch.stack(list(cls.values())).mean(0)
        return Fused(cls, states, embedding, stats)

    def _moe_terms(self, stats: Sequence[RoutingStats]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not stats:
            return None, None
        balance = torch.stack([s.load_balance for s in stats]).mean()
        entropy = torch.stack([s.entropy for s in stats]).mean().detach()
        return self.moe_loss_weight * balance, entropy

    def forward(self, x: PatientInput) -> ModelOutput:
        present = self.check_input(x)
        return self._output(x, present, None)

    def forward_batch(self, xs: Sequence[PatientInput]) -> list[ModelOutput]:
        """Several patients: their slides through the Nystrom region encoder as one padded batch (the part that
        grows with the bag), then each patient's own fusion pass (its token count differs); each output equals
        :meth:`forward` on that patient alone, to float rounding, where no random draw is involved."""
        presents = [self.check_input(x) for x in xs]
        rows = [i for i, p in enumerate(presents) if p.get("wsi")]
        slides: dict[int, tuple[torch.Tensor, int]] = {}
        if rows:
            encoded = self.encoders["wsi"].encode_batch([self.wsi_features(xs[i]) for i in rows],
                                                        [xs[i].wsi_coords for i in rows])
            slides = dict(zip(rows, encoded))
        return [self._output(x, presents[i], slides.get(i)) for i, x in enumerate(xs)]

    def _output(self, x: PatientInput, present: dict[str, bool], wsi: tuple[torch.Tensor, int] | None
                ) -> ModelOutput:
        tokens, info = self.encode(x, present, wsi)
        fused = self.fuse(tokens)
        aux, entropy = self._moe_terms(fused.stats)
        extras = {"present": present, "missing": [], "cls": fused.cls, "aux_loss": aux, "router_entropy": entropy,
                  **info}
        return ModelOutput(self.classifier(fused.embedding), fused.embedding, extras)

    # -- pretraining ---------------------------------------------------------------------------------------

    def masked_inputs_loss(self, x: PatientInput, present: dict[str, bool]) -> tuple[list[torch.Tensor], Fused]:
        """Masked modelling at the encoders' inputs for one patient: a ``mask_ratio`` share of its patches, of its
        gene values and of its report tokens is hidden before the encoders; the patches' (layer-normalised)
        features and the genes' scaled values are reconstructed from their encoder's per-item states, the report
        tokens' (layer-normalised, frozen-encoder) embeddings from the fused report states. Targets are raw inputs,
        never the model's own outputs. Returns one loss per present modality and the fused corrupted pass."""
        corrupted: dict[str, torch.Tensor] = {}
        losses, report_target = [], None
        for m in self.order:
            if not present.get(m):
                continue
            if m == "wsi":
                features = self.wsi_features(x)
                mask = mask_tokens(features.shape[0], self.mask_ratio, device=features.device)
                corrupted[m], _, states = self.encoders["wsi"].encode(features, x.wsi_coords, mask,
                                                                       self.input_masks["wsi"])
                target = F.layer_norm(features, features.shape[-1:]).detach()
                losses.append(masked_token_loss(self.input_decoders["wsi"](states), target, mask))
            elif m == "genomics":
                genes = self.gene_vector(x)[0]
                mask = mask_tokens(genes.shape[0], self.mask_ratio, device=genes.device)
                corrupted[m], states = self.encoders["genomics"].encode(genes, mask, self.input_masks["genomics"])
                losses.append(masked_token_loss(self.input_decoders["genomics"](states), genes.reshape(-1, 1).detach(),
                                                mask))
            else:
                text = x.report_tokens if x.report_tokens is not None else x.report
                text = self.as_input(text.reshape(-1, text.shape[-1]))  # type: ignore[union-attr]
                mask = mask_tokens(text.shape[0], self.mask_ratio, device=text.device)
                hidden = torch.where(mask[:, None], self.input_masks["report"].to(text.dtype), text)
                corrupted[m] = self.encoders["report"](hidden)
                report_target = (F.layer_norm(text, text.shape[-1:]).detach(), mask)
        out = self.fuse(corrupted)
        if report_target is not None:
            target, mask = report_target
            losses.append(masked_token_loss(self.input_decoders["report"](out.states["report"]), target, mask))
        return losses, out

    def pretraining_loss(self, batch: PretrainBatch) -> dict[str, torch.Tensor]:
        """Masked modelling + pairwise InfoNCE + cancer-type triplet + MoE balance (see docs/methods/alter.md)."""
        labels = self.batch_cancer_types(batch)
        presents = [self.check_input(x) for x in batch.inputs]
        tokens = [self.encode(x, present)[0] for x, present in zip(batch.inputs, presents)]

        masked_terms: list[torch.Tensor] = []
        stats: list[RoutingStats] = []
        full: list[Fused] = []
        for x, present, tok in zip(batch.inputs, presents, tokens):
            if self.masking == "inputs":
                losses, out = self.masked_inputs_loss(x, present)
                masked_terms += losses
                stats += out.stats
            else:
                masks = {m: mask_tokens(t.shape[0], self.mask_ratio, device=t.device) for m, t in tok.items()}
                corrupted = {m: torch.where(masks[m][:, None], self.mask_token.to(t.dtype), t)
                             for m, t in tok.items()}
                out = self.fuse(corrupted)
                stats += out.stats
                for m, t in tok.items():
                    masked_terms.append(masked_token_loss(self.decoders[m](out.states[m]), t.detach(), masks[m]))
            whole = self.fuse(tok)
            stats += whole.stats
            full.append(whole)
        fused = torch.cat([f.embedding for f in full])          # (B, dim)
        zero = fused.new_zeros(()) + fused.sum() * 0.0     # 0 with a gradient path

        # inter-modal InfoNCE between unimodal [CLS] outputs, per pair of modalities
        pairs = []
        for a, b in itertools.combinations(self.order, 2):
            both = [i for i, tok in enumerate(tokens) if a in tok and b in tok]
            if len(both) >= 2:
                pairs.append((a, b, both))
        unimodal: dict[tuple[int, str], torch.Tensor] = {}
        for i, m in sorted({(i, m) for a, b, both in pairs for i in both for m in (a, b)},
                           key=lambda im: (im[0], self.order.index(im[1]))):
            if self.fusion_mode == "moe_only":  # no cross-modal attention: the multimodal pass is unimodal
                unimodal[(i, m)] = full[i].cls[m]
            else:
                out = self.fuse({m: tokens[i][m]})
                stats += out.stats
                unimodal[(i, m)] = out.cls[m]
        scale = self.logit_scale.clamp(max=math.log(100.0))
        nce = [symmetric_info_nce(torch.cat([unimodal[(i, a)] for i in both]),
                                  torch.cat([unimodal[(i, b)] for i in both]), scale) for a, b, both in pairs]
        contrastive = torch.stack(nce).mean() if nce else zero + 0.0 * scale

        triplet = triplet_margin_loss(fused, labels.to(fused.device), self.triplet_margin)
        masked = torch.stack(masked_terms).mean()
        moe, _ = self._moe_terms(stats)
        terms = {"masked": self.w_masked * masked, "contrastive": self.w_contrastive * contrastive,
                 "triplet": self.w_triplet * triplet, "moe": zero if moe is None else moe}
        terms["loss"] = terms["masked"] + terms["contrastive"] + terms["triplet"] + terms["moe"]
        return terms
