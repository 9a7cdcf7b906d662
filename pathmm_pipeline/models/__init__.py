"""Models of the training harness: the registry and the classic baselines.

Every model takes one :class:`PatientInput` and returns a :class:`ModelOutput`; build one with
``build_model(name, dims, task, **options)``. Registered baselines:

* ``abmil`` -- gated attention MIL (Ilse et al. 2018) on patch features.
* ``transmil`` -- TransMIL (Shao et al. 2021): Nystrom transformer with PPEG on patch features.
* ``snn`` -- self-normalising network (Klambauer et al. 2017) on the gene vector.
* ``ridge_cox`` -- ridge Cox proportional hazards on pathway mean scores (e.g. the 50 Hallmarks), fitted in closed form.
* ``mcat`` -- MCAT (Chen et al. 2021): genomic-guided co-attention over patches, gene-family tokens.
* ``survpath`` -- SurvPath (Jaume et al. 2024): pathway tokens and patch tokens, sparse multimodal attention.
* ``late_fusion_concat`` / ``late_fusion_kronecker`` -- unimodal encoders (wsi, genomics, report) fused by
  concatenation or by the gated Kronecker product of Pathomic Fusion / PORPOISE.

Multimodal methods with a pretraining objective (``pretrainable``; :mod:`pathmm_pipeline.training.pretrain`):

* ``alter`` -- ALTER (Sun et al. 2025): region-pooled TransMIL, Performer gene tokens pooled by pathway and
  report tokens through a universal transformer with modality-specific mixture-of-experts; masked modelling,
  pairwise InfoNCE and a cancer-type triplet loss; any subset of modalities.
* ``mice`` -- MICE (2025): consensual, per-cancer-type and routed overlapping experts over the modality
  embeddings, cancer-type-conditioned synthesis of absent modalities; survival NLL + cross-modal contrastive.

* ``umeml`` -- UMEML (2024): K pathology prototypes (cross-attention over patches), gene-group tokens and
  register tokens in a unified transformer decoder, with a modularity loss (``aux_loss``).
* ``modaltune`` -- ModalTune: a frozen slide foundation model (``tiny_slide`` / ``gigapath_slide``,
  :mod:`.slide_encoders`) tuned by Modal Adapters to pathway and task-prompt tokens; multi-task KL to
  text-embedded clinical targets.
* ``mstar`` -- mSTAR stage 1: TransMIL slide aggregator aligned to reports and RNA by InfoNCE with an
  inter-cancer triplet loss; stage 2 (the self-taught patch encoder) lives in :mod:`pathmm_pipeline.mstar`.
"""

from __future__ import annotations

from pathmm_pipeline.models import (  # noqa: E402,F401  (register the baselines)
                   abmil,
                   alter,
                   late_fusion,
                   mcat,
                   mice,
                   modaltune,
                   mstar,
                   ridge_cox,
                   snn,
                   survpath,
                   transmil,
                   umeml,
)
from pathmm_pipeline.models.base import (
                   MODALITIES,
                   MODALITY_FIELDS,
                   TASK_KINDS,
                   InputDims,
                   MissingModalityError,
                   ModelConfigError,
                   ModelError,
                   ModelInputError,
                   ModelOutput,
                   PathmmModel,
                   PatientInput,
                   PretrainBatch,
                   TaskSpec,
)
from pathmm_pipeline.models.registry import (
                   DuplicateModelError,
                   ModelOptionError,
                   UnknownModelError,
                   build_model,
                   get_model_class,
                   list_models,
                   model_options,
                   register_model,
                   unregister_model,
)

__all__ = [
    "MODALITIES", "MODALITY_FIELDS", "TASK_KINDS", "DuplicateModelError", "InputDims", "MissingModalityError",
    "ModelConfigError", "ModelError", "ModelInputError", "ModelOptionError", "ModelOutput", "PathmmModel",
    "PatientInput", "PretrainBatch", "TaskSpec", "UnknownModelError", "build_model", "get_model_class", "list_models",
    "model_options", "register_model", "unregister_model",
]
