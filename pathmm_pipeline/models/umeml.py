"""UMEML: pathology prototypes, genomic gene-group tokens and register tokens in one decoder, trained with a
modularity loss (the ``umeml`` model).

Holds the modularity loss in the reference code's form (:func:`published_modularity_loss`) and in Newman's
(:func:`patch_graph`, :func:`soft_assignment`, :func:`modularity`, :func:`modularity_loss`),
:class:`PrototypeCrossAttention` and :class:`UMEML`.

Paper: Yi, Wang, Li & Li, arXiv 2406.07078 (unified modeling enhanced multimodal learning).
Paper-to-code mapping and deviations: docs/methods/umeml.md
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pathmm_pipeline.models.base import InputDims, ModelConfigError, ModelOutput, PathmmModel, PatientInput, TaskSpec
from pathmm_pipeline.models.layers import MissingEmbedding, mlp, snn
from pathmm_pipeline.models.registry import register_model

GENE_GROUPS = ("pathways", "families")
POOLINGS = ("cls", "mean")
MODULARITY_FORMS = ("published", "newman")
UMEML_MODALITIES = ("wsi", "genomics")


# ---------------------------------------------------------------------------------------------- modularity


def patch_graph(patches: torch.Tensor) -> torch.Tensor:
    """(N, D) patch embeddings -> (N, N) affinity ``relu(cos(h_i, h_j))`` with a zero diagonal."""
    x = F.normalize(patches, dim=-1)
    a = torch.relu(x @ x.T)
    return a * (1.0 - torch.eye(a.shape[0], dtype=a.dtype, device=a.device))


def soft_assignment(patches: torch.Tensor, centers: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """(N, D) patches, (K, D) centres -> (N, K): the softmax over k of ``cos(patch, centre_k) / temperature``."""
    sim = F.normalize(patches, dim=-1) @ F.normalize(centers, dim=-1).T
    return torch.softmax(sim / temperature, dim=-1)


def modularity(assignment: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
    """Newman modularity ``Q = trace(C^T B C) / 2m`` of a (soft) assignment (N, K) on a graph (N, N), with
    ``B = A - d d^T / 2m``, ``d = A 1``, ``2m = 1^T A 1``. A graph without edges has Q = 0."""
    d = adjacency.sum(dim=1)
    two_m = d.sum().clamp_min(torch.finfo(adjacency.dtype).tiny)  # no edges: B = 0, so Q = 0
    b = adjacency - torch.outer(d, d) / two_m
    return torch.trace(assignment.T @ b @ assignment) / two_m


def modularity_loss(centers: torch.Tensor, patches: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """``-Q`` of the patches' soft assignment to ``centers`` (K, D) on their affinity graph (:func:`patch_graph`,
    :func:`soft_assignment`, :func:`modularity`). Lower is a more modular clustering."""
    return -modularity(soft_assignment(patches, centers, temperature), patch_graph(patches))


def published_modularity_loss(centers: torch.Tensor, patches: torch.Tensor, temperature: float = 0.1
                              ) -> torch.Tensor:
    """The reference code's modularity loss (HarveyYi/MMDP, ``mmdp/modeling/ops/utils.py``,
    ``compute_modularity``): ``-(1/2m) sum_ij B_ij max_k tanh(C_ik C_jk / temperature)``, with the patch graph
    ``A = relu(cos(h_i, h_j))`` (zero diagonal), ``B = A - d d^T / 2m`` and the assignment
    ``C_ik = relu(cos(h_i, c_k))`` of the (N, D) patches to the (K, D) centres. Each centre is normalised on its
    own (the reference's ``c.T`` of a 3-d tensor normalises across the centres instead; see
    docs/methods/umeml.md). A graph without edges gives 0."""
    x = F.normalize(patches, dim=-1)
    adjacency = patch_graph(patches)
    d = adjacency.sum(dim=1)
    two_m = d.sum().clamp_min(torch.finfo(adjacency.dtype).tiny)
    b = adjacency - torch.outer(d, d) / two_m
    c = torch.relu(x @ F.normalize(centers, dim=-1).T)                              # (N, K)
    best = torch.zeros_like(adjacency)
    for k in range(c.shape[1]):                                                     # max_k C_ik C_jk, N x N at a time
        best = torch.maximum(best, torch.outer(c[:, k], c[:, k]))
    return -(b * torch.tanh(best / temperature)).sum() / two_m


# ---------------------------------------------------------------------------------------------- blocks


def self_attention(dim: int, heads: int, ff_dim: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    """``layers`` pre-norm transformer encoder layers (GELU) and a final LayerNorm; (B, T, dim) -> same."""
    layer = nn.TransformerEncoderLayer(dim, heads, ff_dim, dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)


class PrototypeCrossAttention(nn.Module):
    """``p = p + Dropout(LN(MHA(p, x, x)))``: prototypes (B, K, D) query the patch tokens x (B, N, D); returns
    the prototypes and the head-averaged attention (B, K, N)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, prototypes: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, weights = self.attn(prototypes, patches, patches, need_weights=True)
        return prototypes + self.dropout(self.norm(out)), weights


# ---------------------------------------------------------------------------------------------- the model


@register_model("umeml")
class UMEML(PathmmModel):
    """UMEML on ``wsi`` and genomics as gene-group tokens (``pathways`` or ``families``); either may be absent
    (see the module docstring).

    Options: ``dim`` (256), ``heads`` (8), ``ff_dim`` (None: 2 * dim), ``n_prototypes`` (5), ``n_registers``
    (3), ``use_registers`` (True), ``proto_layers`` (2: prototype cross-attention blocks), ``path_layers`` (1),
    ``omic_layers`` (3), ``decoder_layers`` (2), ``gene_groups`` ("pathways" | "families"), ``snn_hidden``
    (None: (dim, dim)), ``pooling`` ("cls" | "mean"), ``dropout`` (0.25: patch projection, SNNs),
    ``attn_dropout`` (0.1), ``gamma`` (5.0: the modularity weight, the reference's ``ALPHA``), ``use_modularity``
    (True), ``modularity_form`` ("published": the reference code's loss on the cross-attended prototypes and the
    genomic tokens with their CLS, the terms summed; "newman": Newman's soft modularity on the encoded
    prototypes and the gene-group tokens, the terms averaged), ``temperature`` (0.1),
    ``modularity_max_patches`` (1024), ``aux_tasks`` (None: no extra heads; else {name: n_classes}),
    ``modalities`` (default: those the dims give) and ``modality_dropout`` (0.0). The embedding is the fused
    patient vector (dim). ``extras``: ``present``, ``missing``, ``prototype_attention`` (1, K, N) of the last
    cross-attention block, ``aux_logits``, and ``modularity`` / ``modularity_terms`` / ``aux_loss``.
    """

    uses = frozenset(UMEML_MODALITIES)
    requires = frozenset()
    genomics_field = "pathways"

    def __init__(self, dims: InputDims, task: TaskSpec, dim: int = 256, heads: int = 8, ff_dim: int | None = None,
                 n_prototypes: int = 5, n_registers: int = 3, use_registers: bool = True, proto_layers: int = 2,
                 path_layers: int = 1, omic_layers: int = 3, decoder_layers: int = 2, gene_groups: str = "pathways",
                 snn_hidden: Sequence[int] | None = None, pooling: str = "cls", dropout: float = 0.25,
                 attn_dropout: float = 0.1, gamma: float = 5.0, use_modularity: bool = True,
                 temperature: float = 0.1, modularity_max_patches: int = 1024,
                 aux_tasks: Mapping[str, int] | None = None, modalities: Iterable[str] | None = None,
                 modality_dropout: float = 0.0, modularity_form: str = "published") -> None:
        if modularity_form not in MODULARITY_FORMS:
            raise ModelConfigError(f"model '{self.name}': modularity_form must be one of "
                                   f"{', '.join(MODULARITY_FORMS)}, got {modularity_form!r}")
        if gene_groups not in GENE_GROUPS:
            raise ModelConfigError(f"model '{self.name}': gene_groups must be 'pathways' (InputDims.pathway_sizes, "
                                   f"SurvPath tokens) or 'families' (InputDims.family_sizes, MCAT tokens), got "
                                   f"{gene_groups!r}")
        sizes_field = "pathway_sizes" if gene_groups == "pathways" else "family_sizes"
        group_sizes = getattr(dims, sizes_field)
        available = {"wsi": dims.wsi, "genomics": group_sizes}
        chosen = ([m for m in UMEML_MODALITIES if available[m] is not None] if modalities is None
                  else list(modalities))
        unknown = sorted(set(chosen) - set(UMEML_MODALITIES))
        if unknown:
            raise ModelConfigError(f"model '{self.name}' reads only wsi and genomics, not {unknown[0]!r}")
        if not chosen:
            raise ModelConfigError(f"model '{self.name}' needs wsi or genomics ({gene_groups}) in the InputDims; "
                                   f"InputDims.wsi and InputDims.{sizes_field} are None")
        super().__init__(dims, task, modalities=frozenset(chosen), modality_dropout=modality_dropout)
        self.genomics_field = gene_groups  # type: ignore[misc]  (the instance reads this PatientInput field)
        ff_dim = 2 * dim if ff_dim is None else ff_dim
        snn_hidden = (dim, dim) if snn_hidden is None else tuple(snn_hidden)
        aux = dict(aux_tasks or {})
        self._check_options(dim=dim, heads=heads, ff_dim=ff_dim, n_prototypes=n_prototypes,
                            n_registers=n_registers, layers={"proto_layers": proto_layers,
                                                             "path_layers": path_layers,
                                                             "omic_layers": omic_layers,
                                                             "decoder_layers": decoder_layers},
                            snn_hidden=snn_hidden, pooling=pooling, dropout=dropout, attn_dropout=attn_dropout,
                            gamma=gamma, temperature=temperature, max_patches=modularity_max_patches, aux=aux)
        self.order = [m for m in UMEML_MODALITIES if m in self.modalities]
        self.dim = dim
        self.n_prototypes = n_prototypes
        self.n_registers = n_registers if use_registers else 0
        self.use_registers = bool(use_registers)
        self.pooling = pooling
        self.gamma = float(gamma)
        self.use_modularity = bool(use_modularity)
        self.modularity_form = modularity_form
        self.temperature = float(temperature)
        self.modularity_max_patches = int(modularity_max_patches)

        # -- pathology encoder
        if "wsi" in self.modalities:
            self.path_net = mlp(self.need_dim(dims.wsi, "wsi", "wsi"), [dim], dropout)
            self.prototypes = nn.Parameter(torch.empty(1, n_prototypes, dim).uniform_(-1.0 / n_prototypes,
                                                                                    1.0 / n_prototypes))
            self.proto_blocks = nn.ModuleList(PrototypeCrossAttention(dim, heads, attn_dropout)
                                              for _ in range(proto_layers))
            self.path_cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.path_encoder = self_attention(dim, heads, ff_dim, path_layers, attn_dropout)
            self.missing_wsi = MissingEmbedding(1, 1 + n_prototypes, dim)
        # -- genomic encoder
        if "genomics" in self.modalities:
            sizes = self.need_dim(group_sizes, sizes_field, f"genomics ({gene_groups})")
            self.n_groups = len(sizes)
            self.sig_networks = nn.ModuleList(snn(s, snn_hidden, dropout) for s in sizes)
            self.omic_cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.omic_encoder = self_attention(dim, heads, ff_dim, omic_layers, attn_dropout)
            self.missing_genomics = MissingEmbedding(1, 1 + self.n_groups, dim)
        # -- unified decoder
        if self.n_registers:
            self.registers = nn.Parameter(torch.randn(1, self.n_registers, dim) * 0.02)
        self.decoder = self_attention(dim, heads, ff_dim, decoder_layers, attn_dropout)
        self.mm = nn.Sequential(nn.Linear(len(self.order) * dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        # -- heads
        self.classifier = nn.Linear(dim, task.n_outputs)
        self.aux_task_names = list(aux)
        self.aux_heads = nn.ModuleList(nn.Linear(dim, n) for n in aux.values())
        self.embedding_dim = dim

    def _check_options(self, *, dim: int, heads: int, ff_dim: int, n_prototypes: int, n_registers: int,
                       layers: dict[str, int], snn_hidden: tuple[int, ...], pooling: str, dropout: float,
                       attn_dropout: float, gamma: float, temperature: float, max_patches: int,
                       aux: dict) -> None:
        problems = []
        if dim < 1 or heads < 1 or dim % heads:
            problems.append(f"dim ({dim}) must be a positive multiple of heads ({heads})")
        if ff_dim < 1:
            problems.append(f"ff_dim must be >= 1 (or None for 2 * dim), got {ff_dim}")
        if n_prototypes < 1:
            problems.append(f"n_prototypes must be >= 1, got {n_prototypes}")
        if n_registers < 0:
            problems.append(f"n_registers must be >= 0, got {n_registers}")
        problems += [f"{k} must be >= 1, got {v}" for k, v in layers.items() if v < 1]
        if not snn_hidden or snn_hidden[-1] != dim:
            problems.append(f"snn_hidden must end at dim={dim}, got {snn_hidden}")
        if pooling not in POOLINGS:
            problems.append(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        for what, value in (("dropout", dropout), ("attn_dropout", attn_dropout)):
            if not 0.0 <= value < 1.0:
                problems.append(f"{what} must be in [0, 1), got {value}")
        if not gamma >= 0.0:
            problems.append(f"gamma (the modularity weight) must be >= 0, got {gamma}")
        if not temperature > 0.0:
            problems.append(f"temperature must be > 0, got {temperature}")
        if max_patches < 2:
            problems.append(f"modularity_max_patches must be >= 2, got {max_patches}")
        for task_name, n in aux.items():
            if not isinstance(task_name, str) or not task_name:
                problems.append(f"aux_tasks names must be non-empty strings, got {task_name!r}")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                problems.append(f"aux_tasks[{task_name!r}] must be a number of classes >= 1, got {n!r}")
        if problems:
            raise ModelConfigError(f"model '{self.name}': " + "; ".join(problems))

    # -- encoders --------------------------------------------------------------------------------------------

    def cross_attend(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) projected patch tokens -> the prototypes after the cross-attention blocks (1, K, D) and the last
        block's attention (1, K, N)."""
        p, weights = self.prototypes, None
        for block in self.proto_blocks:
            p, weights = block(p, patches.unsqueeze(0))
        assert weights is not None  # proto_layers >= 1
        return p, weights

    def encode_wsi(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) projected patch tokens -> (1, 1 + K, D) [CLS; prototypes] after the pathology encoder, and the
        last cross-attention (1, K, N)."""
        p, weights = self.cross_attend(patches)
        return self.path_encoder(torch.cat([self.path_cls, p], dim=1)), weights

    def encode_genomics(self, x: PatientInput) -> torch.Tensor:
        """(1, 1 + G, D) [CLS; gene-group tokens] after the genomic encoder."""
        groups = getattr(x, self.genomics_field)
        tokens = torch.cat([net(self.as_input(v.reshape(1, -1))) for net, v in zip(self.sig_networks, groups)])
        return self.omic_encoder(torch.cat([self.omic_cls, tokens.unsqueeze(0)], dim=1))

    def modularity_subset(self, n: int, device: torch.device) -> torch.Tensor | None:
        """Indices of the patches the modularity graph uses (None: all of them)."""
        k = self.modularity_max_patches
        if n <= k:
            return None
        if self.training:
            return torch.randperm(n)[:k].to(device)
        return torch.linspace(0, n - 1, k).round().long().to(device)

    # -- forward ---------------------------------------------------------------------------------------------

    def forward(self, x: PatientInput) -> ModelOutput:
        present = self.check_input(x)
        extras: dict = {"present": present, "missing": [m for m in self.order if not present[m]]}
        segments: dict[str, torch.Tensor] = {}
        patches = cross_attended = None
        if "wsi" in self.modalities:
            if present["wsi"]:
                patches = self.path_net(self.wsi_features(x))                          # (N, D)
                cross_attended, extras["prototype_attention"] = self.cross_attend(patches)
                segments["wsi"] = self.path_encoder(torch.cat([self.path_cls, cross_attended], dim=1))
            else:
                segments["wsi"] = self.missing_wsi()
        if "genomics" in self.modalities:
            segments["genomics"] = self.encode_genomics(x) if present["genomics"] else self.missing_genomics()

        # the decoder's sequence: [wsi CLS + prototypes; registers; genomic CLS + tokens]; each modality is pooled
        # over its own segment (its CLS, or the mean of its tokens), wherever the registers sit
        parts, starts, offset = [], {}, 0
        for name, block in (("wsi", segments.get("wsi")), ("registers", self.registers if self.n_registers else None),
                            ("genomics", segments.get("genomics"))):
            if block is not None:
                parts.append(block)
                starts[name] = offset
                offset += block.shape[1]
        out = self.decoder(torch.cat(parts, dim=1))[0]                                  # (T, D)
        pooled = []
        for m in self.order:
            start, length = starts[m], segments[m].shape[1]
            pooled.append(out[start] if self.pooling == "cls" else out[start:start + length].mean(0))
        h = self.mm(torch.cat(pooled).unsqueeze(0))                                     # (1, D)
        extras["aux_logits"] = {n: head(h) for n, head in zip(self.aux_task_names, self.aux_heads)}

        if patches is not None and self.use_modularity and self.gamma > 0:
            graph_nodes = patches.detach()
            subset = self.modularity_subset(graph_nodes.shape[0], graph_nodes.device)
            if subset is not None:
                graph_nodes = graph_nodes[subset]
            if self.modularity_form == "published":  # the reference: centres before the pathology encoder
                terms = {"prototypes": published_modularity_loss(cross_attended[0], graph_nodes, self.temperature)}
                if present.get("genomics"):  # the genomic tokens with their CLS, after the genomic encoder
                    terms["genomics"] = published_modularity_loss(segments["genomics"][0], graph_nodes,
                                                                  self.temperature)
                value = torch.stack(list(terms.values())).sum()
            else:
                terms = {"prototypes": modularity_loss(segments["wsi"][0, 1:], graph_nodes, self.temperature)}
                if present.get("genomics"):
                    terms["genomics"] = modularity_loss(segments["genomics"][0, 1:], graph_nodes, self.temperature)
                value = torch.stack(list(terms.values())).mean()
            extras.update(modularity=value.detach(), modularity_terms={k: v.detach() for k, v in terms.items()},
                          aux_loss=self.gamma * value)
        return ModelOutput(self.classifier(h), h, extras)
