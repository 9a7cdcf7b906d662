"""What every model of the training harness takes and returns, and the base class they share.

* :class:`PatientInput` -- one patient (a bag batch of one); any modality may be absent (``None``).
* :class:`InputDims` -- the input sizes the harness reads from the stores; models size their layers from it.
* :class:`TaskSpec` -- what the head predicts (survival bins or a Cox risk, classes, or one binary logit).
* :class:`ModelOutput` -- logits, the patient embedding and extras (attention weights, ``aux_loss``).
* :class:`PathmmModel` -- the base class: declares the modalities a model reads (``uses``) and must have
  (``requires``), and checks every patient against them (and against the dims) before the forward pass.

Modalities are ``"wsi"`` (patch features, ``wsi``/``wsi_coords``), ``"genomics"`` (any of ``pathways``,
``families``, ``genes``) and ``"report"`` (``report``, optionally ``report_tokens``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from pathmm_pipeline.core.errors import ConfigError, PathmmError

MODALITIES = ("wsi", "genomics", "report")
TASK_KINDS = ("survival", "classification", "binary")

#: the PatientInput fields that carry each modality (the missing-modality stress test sets them all to None)
MODALITY_FIELDS: dict[str, tuple[str, ...]] = {
    "wsi": ("wsi", "wsi_coords"),
    "genomics": ("pathways", "families", "genes"),
    "report": ("report", "report_tokens"),
}
#: how each genomics field is described in error messages
GENOMICS_FORMS = {
    "genes": "`genes` (the flat scaled expression vector)",
    "families": "`families` (the 6 MCAT gene-family vectors)",
    "pathways": "`pathways` (the per-pathway gene vectors, SurvPath tokens)",
}


class ModelError(PathmmError):
    """A model cannot run on what it was given."""


class MissingModalityError(ModelError, ValueError):
    """A patient lacks a modality the model requires (or has none of the modalities the model reads)."""


class ModelInputError(ModelError, ValueError):
    """A patient's tensors do not have the shapes the model was built for."""


class ModelConfigError(ConfigError, ValueError):
    """A model cannot be built from these dims, task or options."""


# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class PatientInput:
    """One patient. Every modality may be absent (``None``).

    ``wsi`` (N, D_wsi) patch features and ``wsi_coords`` (N, 2) level-0 pixel coordinates; ``pathways`` the
    per-pathway gene vectors (variable lengths); ``families`` the 6 MCAT gene-family vectors; ``genes`` (G,)
    the flat scaled expression; ``report`` (D_text,) the report embedding and ``report_tokens`` (T, D_text) its
    token embeddings. A leading batch dimension of one is accepted on every tensor and dropped by the models.
    """

    wsi: torch.Tensor | None = None
    wsi_coords: torch.Tensor | None = None
    pathways: list[torch.Tensor] | None = None
    families: list[torch.Tensor] | None = None
    genes: torch.Tensor | None = None
    report: torch.Tensor | None = None
    report_tokens: torch.Tensor | None = None
    cancer_type: int = 0

    def present(self) -> dict[str, bool]:
        """``{"wsi": .., "genomics": .., "report": ..}``: whether each modality has data.

        Genomics is present when any of ``pathways``, ``families`` or ``genes`` is; the report when its
        embedding or its token embeddings are.
        """
        return {
            "wsi": self.wsi is not None,
            "genomics": self.pathways is not None or self.families is not None or self.genes is not None,
            "report": self.report is not None or self.report_tokens is not None,
        }

    def without(self, *modalities: str) -> PatientInput:
        """A copy with every field of the named modalities set to ``None`` (for missing-modality tests)."""
        unknown = [m for m in modalities if m not in MODALITY_FIELDS]
        if unknown:
            raise ValueError(f"unknown modality {unknown[0]!r}; modalities are {', '.join(MODALITIES)}")
        return dataclasses.replace(self, **{f: None for m in modalities for f in MODALITY_FIELDS[m]})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PatientInput:
        """A copy with every tensor moved (``dtype`` applies to floating-point tensors only)."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)

        def move_list(ts: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
            return None if ts is None else [move(t) for t in ts]  # type: ignore[misc]

        return dataclasses.replace(self, wsi=move(self.wsi), wsi_coords=move(self.wsi_coords),
                                   pathways=move_list(self.pathways), families=move_list(self.families),
                                   genes=move(self.genes), report=move(self.report),
                                   report_tokens=move(self.report_tokens))


@dataclass(frozen=True)
class InputDims:
    """The input sizes a model is built for (the harness reads them from the stores); ``None``: not available."""

    wsi: int | None = None
    genes: int | None = None
    pathway_sizes: tuple[int, ...] | None = None
    family_sizes: tuple[int, ...] | None = None
    report: int | None = None
    n_cancer_types: int = 1
    #: for each pathway of ``pathway_sizes``, the positions of its genes in ``genes`` (gene-token models)
    pathway_members: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        for name in ("pathway_sizes", "family_sizes"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(int(v) for v in value))
        if self.pathway_members is not None:
            object.__setattr__(self, "pathway_members", tuple(tuple(int(i) for i in m) for m in self.pathway_members))
            if self.pathway_sizes is not None and tuple(map(len, self.pathway_members)) != self.pathway_sizes:
                raise ModelConfigError("InputDims: pathway_members do not match pathway_sizes")
            if self.genes is not None and any(i < 0 or i >= self.genes for m in self.pathway_members for i in m):
                raise ModelConfigError(f"InputDims: a pathway member index lies outside the {self.genes} genes")
        problems = [f"{n} must be a positive integer or None, got {getattr(self, n)!r}"
                    for n in ("wsi", "genes", "report") if getattr(self, n) is not None and int(getattr(self, n)) < 1]
        problems += [f"{n} must be a non-empty tuple of positive sizes or None"
                     for n in ("pathway_sizes", "family_sizes")
                     if getattr(self, n) is not None and (not getattr(self, n) or min(getattr(self, n)) < 1)]
        if self.n_cancer_types < 1:
            problems.append(f"n_cancer_types must be >= 1, got {self.n_cancer_types}")
        if problems:
            raise ModelConfigError("InputDims: " + "; ".join(problems))

    @classmethod
    def from_patient(cls, x: PatientInput, n_cancer_types: int = 1) -> InputDims:
        """The dims of one patient's tensors (for tests and quick experiments)."""
        return cls(wsi=None if x.wsi is None else int(x.wsi.shape[-1]),
                   genes=None if x.genes is None else int(x.genes.shape[-1]),
                   pathway_sizes=None if x.pathways is None else tuple(int(t.shape[-1]) for t in x.pathways),
                   family_sizes=None if x.families is None else tuple(int(t.shape[-1]) for t in x.families),
                   report=(int(x.report.shape[-1]) if x.report is not None
                           else int(x.report_tokens.shape[-1]) if x.report_tokens is not None else None),
                   n_cancer_types=n_cancer_types)


@dataclass(frozen=True)
class TaskSpec:
    """What the head predicts.

    * ``"survival"``: ``n_outputs`` discrete time bins (logits of the per-bin hazards, for the discrete-time
      NLL), or ``n_outputs == 1``: one risk score for the Cox partial likelihood.
    * ``"classification"``: ``n_outputs >= 2`` class logits (softmax cross-entropy).
    * ``"binary"``: exactly one logit (sigmoid / BCE-with-logits); for a two-class softmax use
      ``classification`` with 2 classes.
    """

    kind: str
    n_outputs: int

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ModelConfigError(f"task kind {self.kind!r} is not one of {', '.join(TASK_KINDS)}")
        n = self.n_outputs
        if self.kind == "survival" and n < 1:
            raise ModelConfigError(f"a survival task needs n_outputs >= 1 (time bins, or 1 for Cox), got {n}")
        if self.kind == "classification" and n < 2:
            raise ModelConfigError(f"a classification task needs n_outputs >= 2 classes, got {n} -- for one "
                                   f"logit use kind 'binary'")
        if self.kind == "binary" and n != 1:
            raise ModelConfigError(f"a binary task has exactly one logit (BCE with logits), got n_outputs={n} -- "
                                   f"for a two-class softmax use kind 'classification' with n_outputs=2")

    @property
    def is_cox(self) -> bool:
        return self.kind == "survival" and self.n_outputs == 1

    @classmethod
    def survival(cls, n_bins: int = 4) -> TaskSpec:
        return cls("survival", n_bins)

    @classmethod
    def classification(cls, n_classes: int) -> TaskSpec:
        return cls("classification", n_classes)

    @classmethod
    def binary(cls) -> TaskSpec:
        return cls("binary", 1)


@dataclass
class PretrainBatch:
    """A batch of patients for a pretraining step: ``inputs`` (any modality subset each), ``cancer_type`` (B,)
    type indices, and the survival targets where a method's pretraining is supervised: ``bins`` (B,) the
    discrete time bin (-1 unknown) and ``events`` (B,) (1 observed, 0 censored, -1 unknown); ``time_edges`` the
    bins' edges in months (n_bins + 1, cut on the pretraining corpus's training patients), for methods whose
    targets name the months (ModalTune's survival sentences); ``clinical`` (B,) each patient's clinical facts
    (:func:`~pathmm_pipeline.models.clinical_text.clinical_values`: diagnosis, stage, T / N / M, site) for
    methods whose targets are written from the clinical table."""

    inputs: list[PatientInput]
    cancer_type: torch.Tensor
    bins: torch.Tensor | None = None
    events: torch.Tensor | None = None
    time_edges: Sequence[float] | None = None
    clinical: Sequence[Mapping[str, str]] | None = None

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class ModelOutput:
    """``logits`` (1, n_outputs); ``embedding`` (1, E) the patient representation; ``extras`` e.g. attention
    weights, ``"present"`` (the modalities the forward pass used), ``"missing"`` (those it replaced by their
    learned missing embedding) and ``"aux_loss"`` (a scalar the harness adds to the loss)."""

    logits: torch.Tensor
    embedding: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- base class


class PathmmModel(nn.Module):
    """Base class of the harness's models.

    Subclasses set ``uses`` (the modalities they can read) and ``requires`` (those that must be present) and
    implement :meth:`forward`, starting with ``present = self.check_input(x)``. :func:`register_model` sets
    ``name``. The instance attribute ``modalities`` (a subset of ``uses``) is what this instance was built to
    read: a late-fusion model built without report dims does not read reports. ``embedding_dim`` is E.
    """

    name: ClassVar[str] = ""
    uses: ClassVar[frozenset[str]] = frozenset()
    requires: ClassVar[frozenset[str]] = frozenset()
    #: which PatientInput field the model reads genomics from ("genes", "families" or "pathways")
    genomics_field: ClassVar[str | None] = None

    def __init__(self, dims: InputDims, task: TaskSpec, modalities: frozenset[str] | None = None,
                 modality_dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(dims, InputDims):
            raise ModelConfigError(f"model '{self.name}': dims must be an InputDims, not {type(dims).__name__}")
        if not isinstance(task, TaskSpec):
            raise ModelConfigError(f"model '{self.name}': task must be a TaskSpec, not {type(task).__name__}")
        if not 0.0 <= modality_dropout < 1.0:
            raise ModelConfigError(f"model '{self.name}': modality_dropout must be in [0, 1), got {modality_dropout}")
        self.dims = dims
        self.task = task
        self.modalities = frozenset(self.uses if modalities is None else modalities)
        self.modality_dropout = float(modality_dropout)
        self.embedding_dim = 0

    # -- build-time checks ------------------------------------------------------------------------------

    @classmethod
    def modalities_from_dims(cls, dims: InputDims, modalities: Iterable[str] | None = None) -> frozenset[str]:
        """The modalities an instance reads: ``modalities`` when given, else those of wsi / genomics (the flat
        ``genes``) / report whose dims are present. Unknown names, or none at all, are a ModelConfigError."""
        available = {"wsi": dims.wsi, "genomics": dims.genes, "report": dims.report}
        chosen = [m for m in MODALITIES if available[m] is not None] if modalities is None else list(modalities)
        unknown = sorted(set(chosen) - set(MODALITIES))
        if unknown:
            raise ModelConfigError(f"model '{cls.name}': unknown modality {unknown[0]!r}; modalities are "
                                   f"{', '.join(MODALITIES)}")
        if not chosen:
            raise ModelConfigError(f"model '{cls.name}' needs at least one of wsi, genomics (genes), report in "
                                   f"the InputDims; all are None")
        return frozenset(chosen)

    def batch_cancer_types(self, batch: PretrainBatch) -> torch.Tensor:
        """The (B,) cancer-type labels of a pretraining batch; a batch without patients or without one label per
        patient is a ModelError."""
        if not isinstance(batch, PretrainBatch):
            raise ModelError(f"model '{self.name}': pretraining_loss takes a PretrainBatch, not "
                             f"{type(batch).__name__}")
        n = len(batch)
        labels = torch.as_tensor(batch.cancer_type).reshape(-1)
        if n == 0 or labels.numel() != n:
            raise ModelError(f"model '{self.name}': a pretraining batch needs at least one patient and one "
                             f"cancer_type per patient; got {n} patients and {labels.numel()} cancer types")
        return labels

    def need_dim(self, value: Any, what: str, modality: str) -> Any:
        """``value`` (a size from the dims), or ModelConfigError saying the model needs it."""
        if value is None:
            raise ModelConfigError(f"model '{self.name}' reads {modality} but InputDims.{what} is None -- the "
                                   f"stores this run reads have no {modality} input of that form; choose a model "
                                   f"that does not need it (`list_models()`), or provide it")
        return value

    # -- forward-time checks ----------------------------------------------------------------------------

    def check_input(self, x: PatientInput) -> dict[str, bool]:
        """Which of this model's modalities the patient has (after modality dropout when training).

        Raises :class:`MissingModalityError` when a required modality is absent or none of the model's
        modalities is present, and :class:`ModelInputError` when a tensor does not fit the dims.
        """
        if not isinstance(x, PatientInput):
            raise ModelInputError(f"model '{self.name}' takes a PatientInput, not {type(x).__name__}")
        has = x.present()
        present = {m: has[m] for m in sorted(self.modalities)}
        if self.genomics_field is not None and present.get("genomics"):
            if getattr(x, self.genomics_field) is None:
                given = [GENOMICS_FORMS[f] for f in GENOMICS_FORMS if getattr(x, f) is not None]
                raise ModelInputError(f"model '{self.name}' reads genomics as {GENOMICS_FORMS[self.genomics_field]}, "
                                      f"but this patient has genomics only as {' and '.join(given)} -- have the "
                                      f"data loader fill `{self.genomics_field}` (or set every genomics field "
                                      f"to None to mark genomics as missing)")
        absent_required = sorted(m for m in self.requires if not has[m])
        if absent_required:
            have = ", ".join(m for m in MODALITIES if has[m]) or "none"
            raise MissingModalityError(
                f"model '{self.name}' requires {' and '.join(absent_required)}, which this patient lacks "
                f"(fields {', '.join(f for m in absent_required for f in MODALITY_FIELDS[m])} are None; the patient "
                f"has: {have}) -- drop such patients for this model, or use a model that tolerates a missing "
                f"{absent_required[0]}")
        if not any(present.values()):
            raise MissingModalityError(
                f"model '{self.name}' reads {', '.join(sorted(self.modalities))} and this patient has none of them "
                f"-- at least one must be present")
        self._check_shapes(x, present)
        if self.training and self.modality_dropout > 0:
            present = self._drop_modalities(present)
        return present

    def _check_shapes(self, x: PatientInput, present: dict[str, bool]) -> None:
        d = self.dims
        problems: list[str] = []
        if present.get("wsi"):
            w = x.wsi
            shape = tuple(w.shape)  # type: ignore[union-attr]
            if not (w.dim() == 2 or (w.dim() == 3 and shape[0] == 1)) or shape[-2] < 1 or shape[-1] != d.wsi:
                empty = " (an empty bag: set wsi=None to mark the slide missing)" if 0 in shape else ""
                problems.append(f"wsi has shape {shape}, expected (N >= 1, {d.wsi}){empty}")
        if present.get("genomics"):
            form = self.genomics_field
            if form == "genes":
                g = x.genes
                if g.numel() != d.genes or g.dim() > 2:  # type: ignore[union-attr]
                    problems.append(f"genes has shape {tuple(g.shape)}, expected ({d.genes},)")  # type: ignore
            elif form in ("families", "pathways"):
                sizes = d.family_sizes if form == "families" else d.pathway_sizes
                given = getattr(x, form)
                got = tuple(int(t.numel()) for t in given)
                if got != tuple(sizes or ()):
                    problems.append(f"{form} has {len(got)} vectors of sizes {_short(got)}, expected "
                                    f"{len(sizes or ())} of sizes {_short(sizes or ())}")
        if present.get("report") and d.report is not None:
            r = x.report if x.report is not None else x.report_tokens
            if r.shape[-1] != d.report:  # type: ignore[union-attr]
                problems.append(f"report has width {r.shape[-1]}, expected {d.report}")  # type: ignore[union-attr]
        if problems:
            raise ModelInputError(f"model '{self.name}': this patient's inputs do not fit: " + "; ".join(problems)
                                  + " -- the model is built for the InputDims of the stores it reads")

    def _drop_modalities(self, present: dict[str, bool]) -> dict[str, bool]:
        """Training-time modality dropout: drop each optional present modality with probability p, keep one."""
        out = dict(present)
        for m in [m for m, p in present.items() if p and m not in self.requires]:
            if sum(out.values()) > 1 and float(torch.rand(())) < self.modality_dropout:
                out[m] = False
        return out

    # -- helpers for subclasses -------------------------------------------------------------------------

    def _ref(self) -> torch.Tensor:
        return next(self.parameters())

    def as_input(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` on the model's device and in its floating dtype."""
        ref = self._ref()
        return t.to(device=ref.device, dtype=ref.dtype)

    def wsi_features(self, x: PatientInput) -> torch.Tensor:
        """(N, D_wsi) patch features."""
        w = x.wsi
        assert w is not None
        return self.as_input(w.reshape(-1, w.shape[-1]))

    def gene_vector(self, x: PatientInput) -> torch.Tensor:
        """(1, G) expression."""
        assert x.genes is not None
        return self.as_input(x.genes.reshape(1, -1))

    def report_vector(self, x: PatientInput) -> torch.Tensor:
        """(1, D_text) report embedding; the mean of the token embeddings when only those are given."""
        if x.report is not None:
            return self.as_input(x.report.reshape(1, -1))
        assert x.report_tokens is not None
        t = x.report_tokens
        return self.as_input(t.reshape(-1, t.shape[-1]).mean(0, keepdim=True))

    # -- pretraining ------------------------------------------------------------------------------------------

    #: whether the model defines :meth:`pretraining_loss` (the harness then offers a pretraining stage)
    pretrainable: ClassVar[bool] = False

    def pretraining_loss(self, batch: PretrainBatch) -> dict[str, torch.Tensor]:
        """The model's pretraining objective on a batch: named terms (already weighted) and ``"loss"``, their
        sum, which the harness back-propagates. Only models with ``pretrainable = True`` define it."""
        raise ModelError(f"model '{self.name}' has no pretraining objective")

    def fit_pretraining_corpus(self, clinical: Sequence[Mapping[str, str]]) -> None:
        """Called once before pretraining with every corpus patient's clinical facts (the fold's training
        patients only), for objectives that fit something on the corpus (ModalTune's rare subtypes); default:
        nothing."""
        return None

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """The weights a fine-tuning run inherits from pretraining (default: all but the task head
        ``classifier``)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("classifier.")}

    def load_pretrained(self, state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
        """Copy every tensor of ``state`` whose name and shape match this model's; returns ``loaded``,
        ``missing`` (this model's tensors not in ``state``) and ``skipped`` (in ``state``, but unknown here or
        of another shape). Loading nothing at all is an error."""
        own = self.state_dict()
        loaded = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
        skipped = sorted(set(state) - set(loaded))
        if not loaded:
            raise ModelConfigError(f"model '{self.name}': none of the {len(state)} pretrained tensors fits this "
                                   f"model (e.g. {skipped[:3]}) -- was it pretrained with another method or dims?")
        self.load_state_dict({k: state[k] for k in loaded}, strict=False)
        return {"loaded": loaded, "missing": sorted(set(own) - set(loaded)), "skipped": skipped}

    def describe(self) -> dict[str, Any]:
        """Name, modalities, task and parameter count (for logs and provenance)."""
        return {"model": self.name, "uses": sorted(self.uses), "requires": sorted(self.requires),
                "modalities": sorted(self.modalities), "task": dataclasses.asdict(self.task),
                "embedding_dim": self.embedding_dim,
                "parameters": sum(p.numel() for p in self.parameters())}

    def forward(self, x: PatientInput) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    #: whether :meth:`forward_batch` runs the patients as one padded batch (else it loops over :meth:`forward`)
    batched: ClassVar[bool] = False

    def forward_batch(self, xs: Sequence[PatientInput]) -> list[ModelOutput]:
        """One output per patient, each what :meth:`forward` gives that patient alone (to float rounding).
        Models whose forward can pad their bags (``batched = True``) run them together; this default loops."""
        return [self(x) for x in xs]


def _short(sizes: tuple[int, ...]) -> str:
    return str(tuple(sizes)) if len(sizes) <= 8 else f"({', '.join(map(str, sizes[:6]))}, ...)"
