"""Patch encoders for feature extraction: a registry of specs (architecture, input transform, precision,
default weights) and :func:`load_encoder`, which builds one and loads its weights with provenance (the
weights' source and sha256). The built-in encoders are listed in :mod:`pathmm_pipeline.encoders.zoo`."""

from __future__ import annotations

from pathmm_pipeline.encoders import zoo  # noqa: E402,F401  (registers the built-in encoders)
from pathmm_pipeline.encoders.patch import (
                       DuplicateEncoderError,
                       EncoderSpec,
                       LoadedEncoder,
                       UnknownEncoderError,
                       fit_state_dict,
                       get_encoder_spec,
                       list_encoders,
                       load_encoder,
                       register_encoder,
                       unregister_encoder,
)
from pathmm_pipeline.encoders.weights import WeightsError, read_state_dict, resolve_weights

__all__ = [
    "DuplicateEncoderError", "EncoderSpec", "LoadedEncoder", "UnknownEncoderError", "WeightsError",
    "fit_state_dict", "get_encoder_spec", "list_encoders", "load_encoder", "read_state_dict", "register_encoder",
    "resolve_weights", "unregister_encoder",
]
