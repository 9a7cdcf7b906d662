"""mSTAR (Xu et al., arXiv 2407.15362): multimodal self-taught pretraining for pathology.

* stage 1 -- the slide aggregator pretrained against reports and RNA-seq: the model ``mstar``
  (:class:`pathmm_pipeline.models.mstar.MSTAR`), pretrained by the harness's pretraining stage
  (:mod:`pathmm_pipeline.training.pretrain`);
* stage 2 -- self-taught training of the patch encoder with the frozen stage-1 aggregator as teacher:
  :func:`train_patch_encoder` (:mod:`.self_taught`), and :func:`register_mstar_encoder` to extract features
  with the result;
* evaluation -- :func:`zero_shot_classify` and :func:`few_shot_curve` (:mod:`.zero_shot`).
"""

from __future__ import annotations

from ..models.mstar import MSTAR, SlideAggregator
from .self_taught import (SelfTaughtConfig, SelfTaughtTrainer, load_aggregator, register_mstar_encoder,
                          sample_tiles, similarity_loss, train_patch_encoder)
from .zero_shot import ZeroShotResult, class_text_embeddings, few_shot_curve, zero_shot_classify

__all__ = [
    "MSTAR", "SelfTaughtConfig", "SelfTaughtTrainer", "SlideAggregator", "ZeroShotResult", "class_text_embeddings",
    "few_shot_curve", "load_aggregator", "register_mstar_encoder", "sample_tiles", "similarity_loss",
    "train_patch_encoder", "zero_shot_classify",
]
