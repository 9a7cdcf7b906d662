"""mSTAR stage 1 (the ``mstar`` model): a TransMIL slide aggregator pretrained by slide-level contrastive
learning against pathology reports and RNA-seq, with an inter-cancer triplet term.

Holds :class:`SlideAggregator` and :class:`MSTAR` (slide embedding, the re-embedded patch features that are the
targets of stage 2 in :mod:`pathmm_pipeline.training.self_taught`, the shared-space projections that
:mod:`pathmm_pipeline.downstream.zero_shot` uses).
Paper: Xu et al., arXiv 2407.15362, "Multimodal Self-TAught pRetraining".
Paper-to-code mapping and deviations: docs/methods/mstar.md
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from pathmm_pipeline.models.base import (
    MODALITIES,
    InputDims,
    ModelConfigError,
    ModelError,
    ModelOutput,
    PathmmModel,
    PatientInput,
    PretrainBatch,
    TaskSpec,
)
from pathmm_pipeline.models.layers import snn
from pathmm_pipeline.models.objectives import symmetric_info_nce, triplet_margin_loss
from pathmm_pipeline.models.performer import PerformerLayer
from pathmm_pipeline.models.registry import register_model
from pathmm_pipeline.models.transmil import PPEG, TransLayer, square_pad

MAX_LOGIT_SCALE = math.log(100.0)
GENOMICS_ENCODERS = ("performer", "snn")


class PerformerGeneEncoder(nn.Module):
    """mSTAR's RNA-seq encoder: (n, G) scaled expression -> gene tokens (a learned gene-id embedding plus a
    linear embedding of the value) -> Performer (FAVOR+) layers over the G genes -> mean -> (n, dim)."""

    def __init__(self, n_genes: int, dim: int = 64, heads: int = 4, n_features: int = 32, layers: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.gene_embedding = nn.Embedding(n_genes, dim)
        self.value = nn.Linear(1, dim)
        self.layers = nn.ModuleList(PerformerLayer(dim, heads, n_features, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, genes: torch.Tensor) -> torch.Tensor:
        h = self.gene_embedding.weight.unsqueeze(0) + self.value(genes.unsqueeze(-1))   # (n, G, dim)
        for layer in self.layers:
            h = layer(h)
        return self.norm(h).mean(dim=1)


class SlideAggregator(nn.Module):
    """TransMIL without its head: (N, D_wsi) patch features -> ((1, dim) slide embedding, (N, dim) re-embedded
    patch features). Same layers and order as :class:`~pathmm_pipeline.models.transmil.TransMIL`."""

    def __init__(self, d_in: int, dim: int = 512, heads: int = 8, num_landmarks: int | None = None,
                 pinv_iterations: int = 6, dropout: float = 0.1, residual_conv_kernel: int = 33) -> None:
        super().__init__()
        layer = dict(dim=dim, heads=heads, num_landmarks=num_landmarks, pinv_iterations=pinv_iterations,
                     dropout=dropout, residual_conv_kernel=residual_conv_kernel)
        self.fc = nn.Linear(d_in, dim)
        self.act = nn.ReLU()
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1 = TransLayer(**layer)  # type: ignore[arg-type]
        self.pos_layer = PPEG(dim)
        self.layer2 = TransLayer(**layer)  # type: ignore[arg-type]
        self.norm = nn.LayerNorm(dim)
        self.dim = dim

    def project(self, features: torch.Tensor, activate: bool = True) -> torch.Tensor:
        """(N, D_wsi) -> (N, dim): the patch projection (``fc``; with ``activate`` its ReLU too)."""
        h = self.fc(features)
        return self.act(h) if activate else h

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.project(features).unsqueeze(0)                   # (1, N, dim)
        n = h.shape[1]
        h, side_h, side_w = square_pad(h)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        h = self.layer1(h)
        h = self.pos_layer(h, side_h, side_w)
        h = self.layer2(h)
        h = self.norm(h)[0]
        return h[:1], h[1:1 + n]


@register_model("mstar")
class MSTAR(PathmmModel):
    """mSTAR's stage-1 slide aggregator (wsi required; genomics as ``genes`` and reports for pretraining).

    Options: ``dim`` (512: TransMIL width), ``heads`` (8), ``num_landmarks`` (dim // 2), ``dropout`` (0.1, in
    the attention layers), ``proj_dim`` (256: the shared contrastive space), ``genomics_encoder`` ("performer",
    the paper's: :class:`PerformerGeneEncoder` of width ``genomics_dim`` (64) with ``genomics_layers`` (1),
    ``genomics_heads`` (4) and ``genomics_features`` (32) random features; or "snn": an SNN of widths
    ``genomics_hidden`` ((256, 256))), ``genomics_dropout`` (0.25), ``report_hidden`` (None: a linear report/text
    projection; an int: Linear -> GELU -> Linear through that width), pretraining: ``w_report`` (1.0: slide <->
    report), ``w_genomics`` (1.0: slide <-> RNA), ``w_report_genomics`` (1.0: report <-> RNA), ``w_triplet``
    (1.0), ``triplet_margin`` (0.3), ``init_temperature`` (0.07); ``modalities`` (default: wsi plus those the
    dims give). The embedding is the slide embedding (dim)."""

    uses = frozenset(MODALITIES)
    requires = frozenset({"wsi"})
    genomics_field = "genes"
    pretrainable = True

    def __init__(self, dims: InputDims, task: TaskSpec, dim: int = 512, heads: int = 8,
                 num_landmarks: int | None = None, dropout: float = 0.1, proj_dim: int = 256,
                 genomics_hidden: Sequence[int] = (256, 256), genomics_dropout: float = 0.25,
                 report_hidden: int | None = None, w_report: float = 1.0, w_genomics: float = 1.0,
                 w_triplet: float = 1.0, triplet_margin: float = 0.3, init_temperature: float = 0.07,
                 modalities: Iterable[str] | None = None, genomics_encoder: str = "performer",
                 genomics_dim: int = 64, genomics_layers: int = 1, genomics_heads: int = 4,
                 genomics_features: int = 32, w_report_genomics: float = 1.0) -> None:
        available = {"wsi": dims.wsi, "genomics": dims.genes, "report": dims.report}
        chosen = ([m for m in MODALITIES if m == "wsi" or available[m] is not None] if modalities is None
                  else list(modalities))
        unknown = sorted(set(chosen) - set(MODALITIES))
        if unknown:
            raise ModelConfigError(f"model '{self.name}': unknown modality {unknown[0]!r}; modalities are "
                                   f"{', '.join(MODALITIES)}")
        if "wsi" not in chosen:
            raise ModelConfigError(f"model '{self.name}' is a slide aggregator: its modalities must include 'wsi', "
                                   f"got {sorted(chosen)}")
        super().__init__(dims, task, modalities=frozenset(chosen))
        problems = []
        if dim < 1 or heads < 1 or dim % heads:
            problems.append(f"dim ({dim}) must be a positive multiple of heads ({heads})")
        if proj_dim < 1 or not genomics_hidden or min(genomics_hidden) < 1:
            problems.append("proj_dim and every genomics_hidden width must be >= 1")
        if report_hidden is not None and report_hidden < 1:
            problems.append(f"report_hidden must be >= 1 or None, got {report_hidden}")
        if not 0.0 <= dropout < 1.0 or not 0.0 <= genomics_dropout < 1.0:
            problems.append("dropout and genomics_dropout must be in [0, 1)")
        if min(w_report, w_genomics, w_report_genomics, w_triplet, triplet_margin) < 0:
            problems.append("w_report, w_genomics, w_report_genomics, w_triplet and triplet_margin must be >= 0")
        if genomics_encoder not in GENOMICS_ENCODERS:
            problems.append(f"genomics_encoder must be one of {', '.join(GENOMICS_ENCODERS)}, got {genomics_encoder!r}")
        sizes = (genomics_dim, genomics_layers, genomics_heads, genomics_features)
        if genomics_encoder == "performer" and (min(sizes) < 1 or genomics_dim % genomics_heads):
            problems.append("genomics_dim must be a positive multiple of genomics_heads; genomics_layers and "
                            "genomics_features >= 1")
        if not 0.0 < init_temperature <= 1.0:
            problems.append(f"init_temperature must be in (0, 1], got {init_temperature}")
        if problems:
            raise ModelConfigError(f"model '{self.name}': " + "; ".join(problems))
        self.w_report, self.w_genomics, self.w_triplet = float(w_report), float(w_genomics), float(w_triplet)
        self.w_report_genomics = float(w_report_genomics)
        self.triplet_margin = float(triplet_margin)

        self.aggregator = SlideAggregator(self.need_dim(dims.wsi, "wsi", "wsi"), dim, heads, num_landmarks,
                                          dropout=dropout)
        self.wsi_projection = nn.Linear(dim, proj_dim)
        # the pretraining-only towers draw their initial weights from a stream of their own (seeded from the run's
        # seed), so that the slide path and the task head start the same whichever towers exist (an ablation
        # without reports or RNA differs in its objective only)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed() + 1)
            if "genomics" in self.modalities:
                n_genes = self.need_dim(dims.genes, "genes", "genomics (flat gene vector)")
                if genomics_encoder == "performer":
                    self.genomics_encoder = nn.Sequential(
                        PerformerGeneEncoder(n_genes, genomics_dim, genomics_heads, genomics_features, genomics_layers,
                                             dropout),
                        nn.Linear(genomics_dim, proj_dim))
                else:
                    self.genomics_encoder = nn.Sequential(snn(n_genes, tuple(genomics_hidden), genomics_dropout),
                                                          nn.Linear(genomics_hidden[-1], proj_dim))
            if "report" in self.modalities:
                d_text = self.need_dim(dims.report, "report", "report")
                self.report_projection = (nn.Linear(d_text, proj_dim) if report_hidden is None else
                                          nn.Sequential(nn.Linear(d_text, report_hidden), nn.GELU(),
                                                        nn.Linear(report_hidden, proj_dim)))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.classifier = nn.Linear(dim, task.n_outputs)
        self.dim, self.proj_dim = dim, proj_dim
        self.embedding_dim = dim

    # -- the slide side --------------------------------------------------------------------------------------

    def aggregate(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D_wsi) patch features -> ((1, dim) slide embedding, (N, dim) re-embedded patch features)."""
        return self.aggregator(self.as_input(features.reshape(-1, features.shape[-1])))

    def patch_projection(self, features: torch.Tensor, activate: bool = False) -> torch.Tensor:
        """(N, D_wsi) -> (N, dim): the aggregator's patch projection ``fc`` (without its ReLU by default: the
        student side of stage 2)."""
        return self.aggregator.project(self.as_input(features.reshape(-1, features.shape[-1])), activate)

    def reembed_patches(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D_wsi) -> (N, dim): each patch's output token of the aggregator, in its slide's context."""
        return self.aggregate(features)[1]

    def slide_embedding(self, x: PatientInput | torch.Tensor) -> torch.Tensor:
        """(1, dim): the slide embedding of a patient (or of an (N, D_wsi) feature bag)."""
        if isinstance(x, PatientInput):
            self.check_input(x)
            return self.aggregate(self.wsi_features(x))[0]
        return self.aggregate(x)[0]

    def slide_projection(self, embedding: torch.Tensor) -> torch.Tensor:
        """(n, dim) slide embeddings -> (n, proj_dim): into the shared space (unnormalised)."""
        return self.wsi_projection(self.as_input(embedding.reshape(-1, self.dim)))

    # -- the other modalities --------------------------------------------------------------------------------

    def text_projection(self, embedding: torch.Tensor) -> torch.Tensor:
        """(m, D_text) text-encoder embeddings (reports or prompts) -> (m, proj_dim) in the shared space."""
        if "report" not in self.modalities:
            raise ModelConfigError(f"model '{self.name}' was built without reports (InputDims.report is None or "
                                   f"'report' not in modalities): it has no text projection")
        e = self.as_input(torch.as_tensor(embedding))
        if e.shape[-1] != self.dims.report:
            raise ModelError(f"model '{self.name}': text embeddings of width {e.shape[-1]}, the report projection "
                             f"takes {self.dims.report} -- embed prompts with the text encoder of the reports")
        return self.report_projection(e.reshape(-1, e.shape[-1]))

    def genomics_projection(self, genes: torch.Tensor) -> torch.Tensor:
        """(n, G) scaled expression -> (n, proj_dim)."""
        if "genomics" not in self.modalities:
            raise ModelConfigError(f"model '{self.name}' was built without genomics")
        return self.genomics_encoder(self.as_input(genes.reshape(-1, self.dims.genes)))

    # -- fine-tuning -----------------------------------------------------------------------------------------

    def forward(self, x: PatientInput) -> ModelOutput:
        present = self.check_input(x)
        z, patches = self.aggregate(self.wsi_features(x))
        return ModelOutput(self.classifier(z), z, {"present": present, "missing": [], "used": ["wsi"],
                                                   "n_patches": int(patches.shape[0])})

    # -- pretraining -----------------------------------------------------------------------------------------

    def pretraining_loss(self, batch: PretrainBatch) -> dict[str, torch.Tensor]:
        """Slide <-> report, slide <-> RNA and report <-> RNA InfoNCE + inter-cancer triplet on the slides (see
        docs/methods/mstar.md). Slide-less patients take part in the report <-> RNA term only."""
        labels = self.batch_cancer_types(batch)
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE)
        zero = self.logit_scale * 0.0
        present = {i: self.check_input(x) if x.present()["wsi"] else self.present_without_slide(x)
                   for i, x in enumerate(batch.inputs)}
        with_slide = [i for i, x in enumerate(batch.inputs) if x.present()["wsi"]]

        def pair(first: str, second: str, encode_first, encode_second, among: list[int]) -> torch.Tensor:
            have = [i for i in among if present[i].get(first) and present[i].get(second)]
            if len(have) < 2:
                return zero
            return symmetric_info_nce(torch.cat([encode_first(i) for i in have]),
                                      torch.cat([encode_second(i) for i in have]), scale)

        if with_slide:
            stacked = torch.cat([self.aggregate(self.wsi_features(batch.inputs[i]))[0] for i in with_slide])
            shared = dict(zip(with_slide, self.slide_projection(stacked).split(1)))
            triplet = triplet_margin_loss(stacked, labels[with_slide].to(stacked.device), self.triplet_margin)
        else:  # e.g. a batch of the external, slide-less patients only: no slide term
            shared, triplet = {}, zero

        def report(i: int) -> torch.Tensor:
            return self.report_projection(self.report_vector(batch.inputs[i]))

        def genes(i: int) -> torch.Tensor:
            return self.genomics_encoder(self.gene_vector(batch.inputs[i]))

        everyone = list(range(len(batch.inputs)))
        terms = {"wsi_report": self.w_report * pair("wsi", "report", shared.__getitem__, report, with_slide),
                 "wsi_genomics": self.w_genomics * pair("wsi", "genomics", shared.__getitem__, genes, with_slide),
                 "report_genomics": self.w_report_genomics * pair("report", "genomics", report, genes, everyone)
                 if "report" in self.modalities and "genomics" in self.modalities else zero,
                 "triplet": self.w_triplet * triplet}
        terms["loss"] = terms["wsi_report"] + terms["wsi_genomics"] + terms["report_genomics"] + terms["triplet"]
        return terms

    def present_without_slide(self, x: PatientInput) -> dict[str, bool]:
        """Which of the report and RNA a slide-less patient has (the model requires a slide everywhere but in
        the report <-> RNA pretraining term)."""
        has = x.present()
        return {m: bool(has[m]) and m in self.modalities for m in ("report", "genomics")}
