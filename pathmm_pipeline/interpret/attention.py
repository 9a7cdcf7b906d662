"""Per-tile attention of a trained model, one registered extractor per model family.

An extractor takes the model (eval mode) and one :class:`~pathmm_pipeline.models.PatientInput` whose ``wsi``
holds N tiles, and returns N finite non-negative weights summing to 1, in the order of ``wsi``. What each
family shows (the README's heatmap section repeats it):

* ``abmil``, ``late_fusion_concat`` / ``late_fusion_kronecker`` (CLAM-style gated attention), ``mice`` (its
  slide encoder's gated attention pooling, ABMIL or MambaMIL): the pooling's softmax weights.
* ``transmil``, ``mstar`` (its TransMIL aggregator), ``alter`` (its region encoder): the class token's exact
  softmax attention in the last Nystrom layer (heads averaged), read by a forward hook on that layer's input;
  the square-padding copies are folded onto the tiles they copy. The Nystrom layer itself approximates this.
* ``mcat``: the genomic-guided co-attention, averaged over the gene-family queries.
* ``survpath``: the pathway tokens' attention to the patch tokens (heads and pathways averaged, renormalised
  over the patches), recomputed from the sparse attention's own projections by a forward hook.
* ``umeml``: the last prototype cross-attention block, averaged over the prototypes.

The hooks only read: every model's outputs are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from pathmm_pipeline.core.errors import PathmmError
from pathmm_pipeline.core.registry import Registry, UnknownEntryError
from pathmm_pipeline.models.base import ModelOutput, PathmmModel, PatientInput


class NoAttentionError(UnknownEntryError):
    """A model without a registered attention extractor (it does not weigh tiles, or nobody wrote one)."""


class AttentionShapeError(PathmmError, ValueError):
    """An extractor found weights that do not fit the bag."""


Extractor = Callable[[PathmmModel, PatientInput], np.ndarray]

#: model name -> extractor(model, patient) -> (N,) weights summing to 1
ATTENTION: Registry[Extractor] = Registry(
    "attention extractor", unknown=NoAttentionError, describe=lambda f: f.__qualname__,
    hint=" -- a model that does not weigh tiles has only the model-agnostic contribution")


def n_tiles(x: PatientInput) -> int:
    if x.wsi is None:
        raise AttentionShapeError("this patient has no slide features (wsi is None): no tile to weigh")
    return int(x.wsi.reshape(-1, x.wsi.shape[-1]).shape[0])


def normalised(weights: torch.Tensor | np.ndarray, n: int, what: str) -> np.ndarray:
    """``weights`` as (n,) float64 summing to 1; anything else is an AttentionShapeError naming ``what``."""
    w = (weights.detach().to("cpu", torch.float64).numpy() if isinstance(weights, torch.Tensor)
         else np.asarray(weights, np.float64)).reshape(-1)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < -1e-9).any() or w.sum() <= 0:
        raise AttentionShapeError(f"{what}: got weights of shape {w.shape} (finite: {bool(np.isfinite(w).all())}) "
                                  f"for a bag of {n} tiles")
    w = np.clip(w, 0.0, None)
    return w / w.sum()


def run(model: PathmmModel, x: PatientInput) -> ModelOutput:
    """One eval-mode forward pass without gradients."""
    model.eval()
    with torch.no_grad():
        return model(x)


@contextmanager
def captured_inputs(module: nn.Module) -> Iterator[list[tuple[Any, ...]]]:
    """The positional inputs of every call of ``module`` while the block runs (a read-only forward hook)."""
    seen: list[tuple[Any, ...]] = []
    handle = module.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args)))
    try:
        yield seen
    finally:
        handle.remove()


def register_attention(*names: str) -> Callable[[Extractor], Extractor]:
    """Decorator: register one extractor under every model name in ``names``."""
    def decorate(fn: Extractor) -> Extractor:
        for name in names:
            ATTENTION.register(name, fn)
        return fn
    return decorate


def tile_attention(model: PathmmModel, x: PatientInput) -> np.ndarray:
    """The (N,) attention of ``model`` over the tiles of ``x`` (summing to 1), by the model's extractor."""
    return ATTENTION.get(model.name)(model, x)


def has_attention(model_name: str) -> bool:
    return model_name in ATTENTION.names()


# ---------------------------------------------------------------------------------------------- extractors


@register_attention("abmil", "late_fusion_concat", "late_fusion_kronecker", "mice")
def pooling_attention(model: PathmmModel, x: PatientInput) -> np.ndarray:
    """The gated attention pooling's softmax weights (``extras["attention"]``, (1, N))."""
    out = run(model, x)
    if "attention" not in out.extras:
        raise AttentionShapeError(f"model '{model.name}' returned no extras['attention'] (does it read the slide?)")
    return normalised(out.extras["attention"], n_tiles(x), f"model '{model.name}' pooling attention")


def class_token_attention(layer: nn.Module, model: PathmmModel, x: PatientInput) -> np.ndarray:
    """The class token's exact softmax attention in the Nystrom self-attention ``layer`` (a TransLayer's
    ``attn``, whose input is [CLS; N tiles squared by cyclic copies]), heads averaged, folded onto the tiles."""
    n = n_tiles(x)
    with captured_inputs(layer) as seen:
        run(model, x)
    if not seen:
        raise AttentionShapeError(f"model '{model.name}': its last attention layer was not called")
    tokens = seen[-1][0][:1]                                          # (1, 1 + S*S, dim), a batch of one
    b, t, _ = tokens.shape
    with torch.no_grad():
        q, k, _v = layer.to_qkv(tokens).view(b, t, 3, layer.heads, layer.dim_head).permute(2, 0, 3, 1, 4)
        scores = torch.softmax((q[:, :, :1] * layer.scale) @ k.transpose(-1, -2), dim=-1)  # (1, h, 1, t)
    cls = scores[0, :, 0, 1:].mean(0)                                 # (S*S,) over the squared tiles
    folded = torch.zeros(n, dtype=cls.dtype).index_add_(0, torch.arange(cls.shape[0]) % n, cls.cpu())
    return normalised(folded, n, f"model '{model.name}' class-token attention")


@register_attention("transmil")
def transmil_attention(model: PathmmModel, x: PatientInput) -> np.ndarray:
    return class_token_attention(model.layer2.attn, model, x)


@register_attention("mstar")
def mstar_attention(model: PathmmModel, x: PatientInput) -> np.ndarray:
    """mSTAR's slide aggregator (a TransMIL): the class token's attention in its last layer."""
    return class_token_attention(model.aggregator.layer2.attn, model, x)


@register_attention("alter")
def alter_attention(model: PathmmModel, x: PatientInput) -> np.ndarray:
    """ALTER's region encoder (a TransMIL before region pooling): its class token's last-layer attention."""
    return class_token_attention(model.encoders["wsi"].layer2.attn, model, x)


@register_attention("mcat")
def mcat_attention(model: PathmmModel, x: PatientInput) -> np.ndarray:
    """MCAT's co-attention (1, n_families, N), averaged over the gene-family queries."""
    out = run(model, x)
    if "coattention" not in out.extras:
        raise AttentionShapeError("model 'mcat' returned no co-attention (the patient's slide was not read)")
    return normalised(out.extras["coattention"][0].mean(0), n_tiles(x), "model 'mcat' co-attention")


@register_attention("survpath")
def survpath_attention(model: PathmmModel, x: PatientInput) -> np.ndarray:
    """SurvPath: the pathway queries' attention on the patch keys, heads and pathways averaged."""
    n = n_tiles(x)
    layer = model.cross_attender
    with captured_inputs(layer) as seen:
        run(model, x)
    tokens, p = seen[-1][0], int(seen[-1][1])
    b, t, _ = tokens.shape
    with torch.no_grad():
        q, k, _v = layer.to_qkv(layer.norm(tokens)).view(b, t, 3, layer.heads, layer.dim_head).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q[:, :, :p] * layer.scale) @ k.transpose(-1, -2), dim=-1)   # (1, h, P, P + N)
    return normalised(attn[0, :, :, p:].mean((0, 1)), n, "model 'survpath' pathway-to-patch attention")


@register_attention("umeml")
def umeml_attention(model: PathmmModel, x: PatientInput) -> np.ndarray:
    """UMEML: the last prototype cross-attention (1, K, N), averaged over the K prototypes."""
    out = run(model, x)
    if "prototype_attention" not in out.extras:
        raise AttentionShapeError("model 'umeml' returned no prototype attention (the slide was not read)")
    return normalised(out.extras["prototype_attention"][0].mean(0), n_tiles(x), "model 'umeml' prototype attention")
