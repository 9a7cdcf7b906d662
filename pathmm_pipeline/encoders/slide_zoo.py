"""Slide encoders as a stage: one frozen slide-level model per entry, mapping one slide's patch features to one
slide embedding (the ``slide-features`` stage, ``results/slide_features/<encoder>/<slide>.zarr``).

Every entry is a :class:`SlideZooSpec`: the patch encoder whose features it was trained on and their width, the
embedding width, the parameter count, the published weights (a hub repository named in messages, never
downloaded here), and a builder of the architecture; the key names of each module are those of the published
checkpoint, so a downloaded file loads **strictly** (:func:`load_slide_embedder`; a file that does not fit raises
:class:`~pathmm_pipeline.encoders.weights.WeightsError` naming it and the first missing / unexpected /
mis-shaped keys). Without weights an entry is randomly initialised (seeded) and only good for shape tests --
the stage records "random init" in its provenance.

Every module's ``forward(x, coords, patch_size_lv0)`` takes the ``(N, D)`` features, their ``(N, 2)`` level-0
top-left coordinates (x, y) and the tile's size in level-0 pixels, and returns the ``(E,)`` slide embedding.

Entries (architectures reimplemented from the authors' code; counts are ``sum(p.numel())`` of the built module,
shared modules counted once):

* ``mean`` -- mean of the patch features; parameter-free, any patch encoder, E = D.
* ``titan`` -- TITAN (Ding et al., Nature Medicine 2025; ``MahmoodLab/TITAN``, its ``vision_config``):
  CONCH v1.5 features (768-d, 512-px tiles at 20x) placed on their grid (cell = ``(coords - min) //
  patch_size_lv0``, empty cells dropped), ``patch_embed`` Linear(768, 768) + GELU, a [CLS] token, 6 pre-norm ViT
  blocks (768-d, 12 heads, MLP 3072, LayerNorm eps 1e-6, qkv bias) whose attention adds the 2-D **ALiBi** bias
  ``-slope_h * euclidean grid distance`` between patch tokens (zero for the [CLS] row and column; slopes of
  ALiBi for 12 heads: 2^-1 ... 2^-8 then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5), the final ``norm``, then CoCa's
  ``parallel`` attentional poolers (128-query ``attn_pool`` for captioning, 1-query ``attn_pool_contrastive``,
  8 heads each) and ``proj`` (768 x 768). The slide embedding is the contrastive pooler's output before
  ``proj`` (TITAN's ``encode_slide_from_patch_features``, ``no_proj=True``), 768-d. 48,539,904 parameters
  (from the published config and code; the paper's own count is not confirmed here). Checkpoint keys are
  under ``vision_encoder.`` in the hub's ``model.safetensors``; the text tower's keys are left out.
* ``prism`` -- PRISM's slide encoder (Shaikovski et al. 2024; ``paige-ai/Prism``, its ``perceiver_config``):
  Virchow tile embeddings (2560-d: class token + mean patch token) into a Perceiver resampler of 1 + 512
  learned latents (1280-d): 8 layers of cross-attention (1 head of 1280, no bias, no context norm, the layers
  from the third on reusing the second's weights) + GEGLU feed-forward, each followed by a 6-block latent
  transformer (8 heads, bias-free projections; all 8 layers share the first layer's blocks); ``cls_norm`` of
  latent 0 is the slide embedding (``image_embedding``, 1280-d). The BioGPT report decoder and the contrastive
  heads are not built. 99,037,440 parameters (from the published config; not confirmed against a paper count).
  Checkpoint keys are under ``image_resampler.``; the decoder's and heads' keys are left out.
* ``chief`` -- CHIEF (Wang et al., Nature 2024; ``hms-dbmi/CHIEF`` ``CHIEF(size_arg="small")``): CTransPath
  features (768-d) -> Linear(768, 512) + ReLU -> gated attention (512 -> 256, tanh x sigmoid, one score per
  tile); the slide embedding is the attention-weighted mean of the **input** features (``WSI_feature``,
  768-d). The classification, instance and text-to-vision heads and the 19 x 768 organ-embedding buffer are
  built so ``CHIEF_pretraining.pth`` loads strictly, but do not enter the embedding (the anatomic-site prompt
  only enters ``WSI_feature_anatomical``). 1,185,032 parameters (from the code; not in the paper).
* ``feather`` / ``feather_uni_v2`` -- FEATHER-24K (Shao et al., ICML 2025, MIL-Lab; ``MahmoodLab/abmil.base.
  conch_v15.pc108-24k`` / ``...uni_v2.pc108-24k``): ABMIL ``base`` -- ``patch_embed`` Linear(D, 512) + ReLU,
  gated attention 512 -> 384 -> 1, softmax over tiles, attention-weighted mean of the embedded tiles (512-d).
  788,097 (CONCH v1.5, 768-d) and 1,181,313 (UNI2-h, 1536-d) parameters from the code; the MIL-Lab README rounds
  every FEATHER-24K to "0.9M" (the count of the 1024-d UNI variant, 919,169). The 108-way pretraining
  classifier, if present in a checkpoint, is left out (``classifier.*``).
* ``madeleine`` -- MADELEINE (Jaume et al., ECCV 2024; ``MahmoodLab/madeleine``): CONCH v1 features (512-d,
  256-px tiles at 10x) -> ``pre_attn`` (3 x Linear + LayerNorm + GELU: 512 -> 512 -> 512 -> 2048) split into 4
  heads of 512 (feature ``e * 4 + h`` goes to head ``h``), one gated-attention ABMIL per head (512 -> 512 -> 1,
  softmax), each head's attention-weighted sum, flattened ``(512, 4) -> 2048`` and ``projector`` Linear(2048, 512)
  -> the 512-d slide embedding (``encode_he``). ``token_projector`` (the pretraining's local-alignment head) is
  built so ``model.pt`` loads strictly. 4,996,740 parameters, with the released config (4 heads, hidden 512) as
  in the authors' launch script; not confirmed against the hub's ``model_config.json``.
* ``gigapath_slide`` -- the Prov-GigaPath LongNet slide encoder of :mod:`pathmm_pipeline.encoders.slide`
  (86,330,880 parameters; token 0 after the final norms), on coordinates rescaled so that one tile is 256 units
  (GigaPath's grid cell).
* ``tiny_slide`` -- the seeded 2-block stand-in of :mod:`pathmm_pipeline.encoders.slide` (any width, 64-d).

A feature store from another patch encoder is refused with one line (:func:`check_patch_features`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pathmm_pipeline.core.errors import ConfigError
from pathmm_pipeline.core.provenance import hash_file
from pathmm_pipeline.core.registry import DuplicateEntryError, Registry, UnknownEntryError
from pathmm_pipeline.encoders.weights import (
    WeightsError,
    describe_mismatch,
    is_hub_reference,
    read_state_dict,
    resolve_weights,
    strip_prefixes,
)

#: the seed of every randomly initialised entry (drawn from a private RNG state)
SLIDE_ZOO_SEED = 0


class UnknownSlideZooError(UnknownEntryError):
    """A slide-encoder name the stage does not know."""


class DuplicateSlideZooError(DuplicateEntryError):
    """A slide encoder registered twice."""


class PatchFeatureMismatch(ConfigError):
    """Features made by a patch encoder the slide encoder was not trained on."""


# --------------------------------------------------------------------------------------------- building blocks


def _check_inputs(x: torch.Tensor, coords: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = x.reshape(-1, x.shape[-1])
    if x.shape[0] == 0:
        raise ValueError("a slide encoder needs at least one patch")
    if coords is not None:
        coords = coords.reshape(-1, coords.shape[-1])
        if coords.shape != (x.shape[0], 2):
            raise ValueError(f"coords have shape {tuple(coords.shape)}, expected ({x.shape[0]}, 2)")
    return x, coords


class GatedAttention(nn.Module):
    """ABMIL gated attention scores (Ilse et al. 2018): ``attention_c(tanh(a x) * sigmoid(b x))``, (N, L) -> (N, 1).
    ``attention_a`` / ``attention_b`` are Sequentials (Linear, activation[, Dropout]) as in CLAM / MIL-Lab."""

    def __init__(self, dim: int, hidden: int, dropout: bool = True) -> None:
        super().__init__()
        extra = [nn.Dropout(0.25)] if dropout else []
        self.attention_a = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), *extra)
        self.attention_b = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), *extra)
        self.attention_c = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention_c(self.attention_a(x) * self.attention_b(x))


class MeanPooling(nn.Module):
    """The mean of the patch features (no parameters)."""

    def forward(self, x: torch.Tensor, coords: torch.Tensor | None = None,
                patch_size_lv0: float | None = None) -> torch.Tensor:
        x, _ = _check_inputs(x, coords)
        return x.mean(dim=0)


# --------------------------------------------------------------------------------------------- TITAN


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi head slopes (Press et al. 2022): ``2^(-8 i / n)`` for a power of two ``n``; otherwise those of the
    nearest lower power of two followed by every other slope of the next power of two."""
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]
    if math.log2(heads).is_integer():
        return power_of_two(heads)
    lower = 2 ** math.floor(math.log2(heads))
    return power_of_two(lower) + power_of_two(2 * lower)[0::2][:heads - lower]


class TitanAttention(nn.Module):
    """Multi-head self-attention with an additive bias (ALiBi): ``qkv`` and ``proj`` as timm's ViT."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, dim = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(b, t, dim))


class TitanMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TitanBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TitanAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = TitanMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class TitanBlocks(nn.Module):
    """Holds the blocks under ``modules_list`` (the published key names)."""

    def __init__(self, blocks: list[TitanBlock]) -> None:
        super().__init__()
        self.modules_list = nn.ModuleList(blocks)


class AttentionalPooler(nn.Module):
    """CoCa's attentional pooler: ``n_queries`` learned queries cross-attend (``nn.MultiheadAttention``) to the
    layer-normed tokens."""

    def __init__(self, dim: int, heads: int, n_queries: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, dim))
        self.attn = nn.MultiheadAttention(dim, heads, kdim=dim, vdim=dim)
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(1, T, D)`` -> ``(1, n_queries, D)``."""
        kv = self.ln_k(x).transpose(0, 1)                                    # (T, 1, D)
        q = self.ln_q(self.query).unsqueeze(1)                               # (Q, 1, D)
        out, _ = self.attn(q, kv, kv, need_weights=False)
        return out.transpose(0, 1)


class TitanSlideEncoder(nn.Module):
    """TITAN's slide (vision) encoder; defaults are the published ``vision_config`` (see the module docstring)."""

    def __init__(self, d_in: int = 768, embed_dim: int = 768, depth: int = 6, heads: int = 12,
                 mlp_ratio: float = 4.0, pooler_heads: int = 8, pooler_queries: int = 128) -> None:
        super().__init__()
        self.heads = heads
        self.patch_embed = nn.Sequential(nn.Linear(d_in, embed_dim), nn.GELU())
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = TitanBlocks([TitanBlock(embed_dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.attn_pool = AttentionalPooler(embed_dim, pooler_heads, pooler_queries)
        self.attn_pool_contrastive = AttentionalPooler(embed_dim, pooler_heads, 1)
        self.proj = nn.Parameter(embed_dim ** -0.5 * torch.randn(embed_dim, embed_dim))

    @staticmethod
    def grid(x: torch.Tensor, coords: torch.Tensor, patch_size_lv0: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The non-empty grid cells in row-major order: their summed features and their (row, col) cells.

        As TITAN: cell = ``(coords - min) // patch_size_lv0`` with ``coords`` (x, y), rows indexed by x; features
        falling in one cell add up; a cell whose feature sum is exactly zero counts as background."""
        cells = torch.div(coords.to(torch.float64) - coords.to(torch.float64).min(dim=0).values, float(patch_size_lv0),
                          rounding_mode="floor").long()
        cells = cells - cells.min(dim=0).values
        width = int(cells[:, 1].max()) + 1
        index = cells[:, 0] * width + cells[:, 1]
        unique, inverse = torch.unique(index, sorted=True, return_inverse=True)
        summed = torch.zeros(len(unique), x.shape[1], dtype=torch.float32, device=x.device)
        summed.index_add_(0, inverse, x.float())
        keep = (summed != 0).any(dim=1)
        rc = torch.stack([unique // width, unique % width], dim=1)
        return summed[keep], rc[keep]

    def alibi(self, rc: torch.Tensor) -> torch.Tensor:
        """``(1, H, T + 1, T + 1)``: ``-slope_h * distance`` between patch cells, zero for the [CLS] token."""
        pos = rc.to(torch.float32)
        dist = torch.cdist(pos, pos)
        slopes = torch.tensor(alibi_slopes(self.heads), dtype=torch.float32, device=rc.device).view(-1, 1, 1)
        bias = torch.zeros(1, self.heads, len(rc) + 1, len(rc) + 1, device=rc.device)
        bias[0, :, 1:, 1:] = -slopes * dist
        return bias

    def forward(self, x: torch.Tensor, coords: torch.Tensor | None, patch_size_lv0: float | None) -> torch.Tensor:
        x, coords = _check_inputs(x, coords)
        if coords is None or not patch_size_lv0:
            raise ValueError("TITAN needs the patches' level-0 coordinates and the tile size at level 0")
        feats, rc = self.grid(x, coords, patch_size_lv0)
        h = self.patch_embed(feats.to(self.cls_token.dtype)).unsqueeze(0)
        h = torch.cat([self.cls_token.to(h.dtype), h], dim=1)
        bias = self.alibi(rc)
        for block in self.blocks.modules_list:
            h = block(h, bias)
        h = self.norm(h)
        return self.attn_pool_contrastive(h)[0, 0]


# --------------------------------------------------------------------------------------------- PRISM


class PerceiverCrossAttention(nn.Module):
    """PRISM's cross-attention of the latents to the tiles: ``x_norm`` on the latents only, bias-free
    ``to_q`` / ``to_kv`` / ``to_out``."""

    def __init__(self, dim: int, context_dim: int, heads: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.x_norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        q = self.to_q(self.x_norm(x)).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(context).view(b, context.shape[1], 2, self.heads, -1).unbind(2)
        out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2))
        return self.to_out(out.transpose(1, 2).reshape(b, n, dim))


class GegluFeedForward(nn.Module):
    """``norm`` -> Linear(dim, 2 dim) -> GEGLU (x * gelu(gate)) -> Linear(dim, dim) (``net.0`` / ``net.2``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(nn.Linear(dim, 2 * dim), nn.Identity(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.net[0](self.norm(x)).chunk(2, dim=-1)
        return self.net[2](value * F.gelu(gate))


class LatentSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mha = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.mha(x, x, x, need_weights=False)[0]


class PrismSlideEncoder(nn.Module):
    """PRISM's Perceiver resampler (``image_resampler``); defaults are the published ``perceiver_config``."""

    def __init__(self, d_in: int = 2560, dim: int = 1280, latents: int = 512, depth: int = 8,
                 transformer_depth: int = 6, heads: int = 8, own_xattn_layers: int = 2,
                 own_transformer_layers: int = 1) -> None:
        super().__init__()
        self.cls_norm = nn.LayerNorm(dim)
        self.img_norm = nn.LayerNorm(dim)
        self.perceiver = nn.Module()
        self.perceiver.latents = nn.Parameter(torch.randn(latents + 1, dim))
        layers: list[nn.ModuleDict] = []
        for i in range(depth):
            xattn = (nn.ModuleDict({"xattn": PerceiverCrossAttention(dim, d_in), "ff": GegluFeedForward(dim)})
                     if i < own_xattn_layers else layers[-1]["xattn"])
            tf = (nn.ModuleList(nn.ModuleDict({"mhsa": LatentSelfAttention(dim, heads), "ff": GegluFeedForward(dim)})
                                for _ in range(transformer_depth))
                  if i < own_transformer_layers else layers[-1]["tf"])
            layers.append(nn.ModuleDict({"xattn": xattn, "tf": tf}))
        self.perceiver.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, coords: torch.Tensor | None = None,
                patch_size_lv0: float | None = None) -> torch.Tensor:
        x, _ = _check_inputs(x, coords)
        context = x.to(self.perceiver.latents.dtype).unsqueeze(0)
        h = self.perceiver.latents.unsqueeze(0)
        for layer in self.perceiver.layers:
            h = h + layer["xattn"]["xattn"](h, context)
            h = h + layer["xattn"]["ff"](h)
            for block in layer["tf"]:
                h = h + block["mhsa"](h)
                h = h + block["ff"](h)
        return self.cls_norm(h[0, 0])


# --------------------------------------------------------------------------------------------- CHIEF


class ChiefAttentionHead(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, 1)


class ChiefSlideEncoder(nn.Module):
    """CHIEF ``size_arg="small"`` (see the module docstring): ``attention_net`` = Linear + ReLU + Dropout +
    gated attention; the embedding is ``softmax(A) @ x``."""

    def __init__(self, d_in: int = 768, hidden: int = 512, attn_dim: int = 256, n_classes: int = 2,
                 text_dim: int = 768, organs: int = 19) -> None:
        super().__init__()
        self.attention_net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(0.25),
                                           GatedAttention(hidden, attn_dim))
        self.classifiers = nn.Linear(hidden, n_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(n_classes))
        self.att_head = ChiefAttentionHead(hidden, attn_dim)
        self.text_to_vision = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU(), nn.Dropout(0.25))
        self.register_buffer("organ_embedding", torch.zeros(organs, text_dim))

    def forward(self, x: torch.Tensor, coords: torch.Tensor | None = None,
                patch_size_lv0: float | None = None) -> torch.Tensor:
        x, _ = _check_inputs(x, coords)
        x = x.to(self.classifiers.weight.dtype)
        scores = self.attention_net(x)                                       # (N, 1)
        return torch.softmax(scores[:, 0], dim=0) @ x


# --------------------------------------------------------------------------------------------- FEATHER


class FeatherSlideEncoder(nn.Module):
    """MIL-Lab ABMIL ``base`` (FEATHER): ``patch_embed`` Linear + ReLU, gated attention ``global_attn``, the
    attention-weighted mean of the embedded tiles."""

    def __init__(self, d_in: int = 768, embed_dim: int = 512, attn_dim: int = 384) -> None:
        super().__init__()
        self.patch_embed = nn.Sequential(nn.Linear(d_in, embed_dim), nn.ReLU())
        self.global_attn = GatedAttention(embed_dim, attn_dim)

    def forward(self, x: torch.Tensor, coords: torch.Tensor | None = None,
                patch_size_lv0: float | None = None) -> torch.Tensor:
        x, _ = _check_inputs(x, coords)
        h = self.patch_embed(x.to(self.global_attn.attention_c.weight.dtype))
        return torch.softmax(self.global_attn(h)[:, 0], dim=0) @ h


# --------------------------------------------------------------------------------------------- MADELEINE


class MadeleineEmbedder(nn.Module):
    """MADELEINE's ``wsi_embedders``: the shared ``pre_attn`` MLP and one gated ABMIL per head (``attn``)."""

    def __init__(self, d_in: int, hidden: int, heads: int, attn_hidden: int) -> None:
        super().__init__()
        self.heads = heads
        blocks: list[nn.Module] = []
        for a, b in ((d_in, hidden), (hidden, hidden), (hidden, hidden * heads)):
            blocks += [nn.Linear(a, b), nn.LayerNorm(b), nn.GELU(), nn.Dropout(0.1)]
        self.pre_attn = nn.Sequential(*blocks)
        self.attn = nn.ModuleList(GatedAttention(hidden, attn_hidden) for _ in range(heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` -> ``(hidden, heads)``: each head's attention-weighted sum of its share of the features."""
        h = self.pre_attn(x).view(x.shape[0], -1, self.heads)                # feature e * heads + c -> [e, c]
        pooled = [torch.softmax(attn(h[:, :, c])[:, 0], dim=0) @ h[:, :, c] for c, attn in enumerate(self.attn)]
        return torch.stack(pooled, dim=-1)


class MadeleineSlideEncoder(nn.Module):
    """MADELEINE's H&E slide embedding (``encode_he``); defaults are the released configuration."""

    def __init__(self, d_in: int = 512, hidden: int = 512, heads: int = 4, attn_hidden: int = 512,
                 token_dim: int = 128) -> None:
        super().__init__()
        self.wsi_embedders = MadeleineEmbedder(d_in, hidden, heads, attn_hidden)
        self.token_projector = nn.Linear(attn_hidden * heads, token_dim)
        self.projector = nn.Linear(attn_hidden * heads, attn_hidden)

    def forward(self, x: torch.Tensor, coords: torch.Tensor | None = None,
                patch_size_lv0: float | None = None) -> torch.Tensor:
        x, _ = _check_inputs(x, coords)
        return self.projector(self.wsi_embedders(x.to(self.projector.weight.dtype)).reshape(-1))


# --------------------------------------------------------------------------------------------- GigaPath, tiny


class TokenZeroEmbedder(nn.Module):
    """A :class:`~pathmm_pipeline.encoders.slide.SlideEncoder` (ModalTune's token API) as a slide embedder:
    token 0 of its output. Coordinates are rescaled so that one tile spans ``tile_units`` (GigaPath's 256)."""

    def __init__(self, encoder: nn.Module, tile_units: float = 256.0) -> None:
        super().__init__()
        self.slide_encoder = encoder
        self.tile_units = tile_units

    def forward(self, x: torch.Tensor, coords: torch.Tensor | None, patch_size_lv0: float | None) -> torch.Tensor:
        x, coords = _check_inputs(x, coords)
        if coords is None or not patch_size_lv0:
            raise ValueError("this slide encoder needs the patches' coordinates and the tile size at level 0")
        scaled = coords.to(torch.float64) * (self.tile_units / float(patch_size_lv0))
        return self.slide_encoder(x.to(self.slide_encoder.norm.weight.dtype), scaled)[0, 0]


def _gigapath(d_in: int) -> nn.Module:
    from pathmm_pipeline.encoders.slide import GigaPathSlideEncoder

    return TokenZeroEmbedder(GigaPathSlideEncoder(d_in))


def _tiny(d_in: int) -> nn.Module:
    from pathmm_pipeline.encoders.slide import TinySlideEncoder

    return TokenZeroEmbedder(TinySlideEncoder(d_in))


# --------------------------------------------------------------------------------------------- registry


def _keep_under(prefix: str) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """A checkpoint adapter: when any key starts with ``prefix``, only those keys, without it."""
    def adapt(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        return state
    return adapt


def _drop_under(prefix: str) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    return lambda state: {k: v for k, v in state.items() if not k.startswith(prefix)}


def _under_slide_encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GigaPath / tiny checkpoints hold the bare encoder's keys; the embedder wraps it as ``slide_encoder``."""
    if all(k.startswith("slide_encoder.") for k in state):
        return state
    return {f"slide_encoder.{k}": v for k, v in state.items()}


@dataclass(frozen=True)
class SlideZooSpec:
    """One slide encoder of the stage (see the module docstring)."""

    name: str
    architecture: str
    #: the patch encoder (name in :mod:`pathmm_pipeline.encoders.zoo`) and width its weights expect; None: any
    patch_encoder: str | None
    d_in: int | None
    #: the slide embedding width; None: that of the input features (mean pooling)
    embed_dim: int | None
    #: parameters of the built architecture (shared weights once), at ``d_in``
    n_params: int
    #: where that count comes from, and whether it matches a count the authors published
    params_source: str
    params_published: bool
    builder: Callable[[int], nn.Module]
    #: where the published weights are (text for messages; never downloaded here); None: nothing to load
    published_weights: str | None = None
    #: checkpoint -> the architecture's keys (sub-module selection), applied after the wrapper prefixes go
    adapt: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = field(default=None, repr=False)
    needs_coords: bool = False
    reference: str = ""

    def output_dim(self, d_in: int) -> int:
        return int(d_in) if self.embed_dim is None else self.embed_dim


SLIDE_ZOO: Registry[SlideZooSpec] = Registry(
    "slide encoder", unknown=UnknownSlideZooError, duplicate=DuplicateSlideZooError,
    describe=lambda spec: spec.architecture, same_again=False)


def register_slide_zoo(spec: SlideZooSpec, *, replace: bool = False) -> SlideZooSpec:
    return SLIDE_ZOO.register(spec.name, spec, replace=replace)


def list_slide_zoo() -> list[str]:
    return SLIDE_ZOO.names()


def get_slide_zoo_spec(name: str) -> SlideZooSpec:
    return SLIDE_ZOO.get(name)


def _seeded(builder: Callable[[int], nn.Module], d_in: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SLIDE_ZOO_SEED)
        return builder(d_in)


def check_patch_features(spec: SlideZooSpec, d_in: int, patch_encoder: str | None = None,
                         where: str | os.PathLike[str] | None = None) -> None:
    """Refuse features of the wrong width, or from a patch encoder other than the one ``spec`` was trained on
    (one line naming both); ``patch_encoder`` None (unknown) checks the width only."""
    place = f"{where}: " if where else ""
    if spec.d_in is not None and int(d_in) != spec.d_in:
        raise PatchFeatureMismatch(
            f"{place}slide encoder '{spec.name}' takes {spec.d_in}-d {spec.patch_encoder} features, these are "
            f"{d_in}-d{f' ({patch_encoder})' if patch_encoder else ''} -- extract {spec.patch_encoder} features "
            f"for it, or choose a slide encoder of {patch_encoder or 'this encoder'}")
    if spec.patch_encoder is not None and patch_encoder is not None and patch_encoder != spec.patch_encoder:
        raise PatchFeatureMismatch(
            f"{place}slide encoder '{spec.name}' was trained on {spec.patch_encoder} features, these come from "
            f"{patch_encoder} -- extract {spec.patch_encoder} features for it (same width is not enough)")


def load_slide_embedder(name: str, d_in: int, weights: str | os.PathLike[str] | None = None,
                        ) -> tuple[nn.Module, dict[str, str | None]]:
    """Slide encoder ``name`` for ``d_in``-wide features, frozen (``requires_grad`` False, eval mode), and what was
    loaded: ``{"weights": resolved path or "random init", "weights_sha256": sha256 or None}``.

    ``weights``: None (seeded random init) or a local file / folder (read as the patch encoders' weights are;
    wrapper prefixes stripped; :attr:`SlideZooSpec.adapt` selects the slide encoder's sub-module), loaded
    **strictly**. A hub reference is refused: nothing is downloaded here.
    """
    spec = get_slide_zoo_spec(name)
    d_in = int(d_in)
    check_patch_features(spec, d_in)
    if weights is None:
        model = _seeded(spec.builder, d_in)
        what = "random init" if any(True for _ in model.parameters()) else "none (no parameters)"
        loaded: dict[str, str | None] = {"weights": what, "weights_sha256": None}
    else:
        hint = (f"download {spec.published_weights} where the hub is reachable and pass its local path"
                if spec.published_weights else f"slide encoder '{name}' has no published weights: leave them unset")
        if is_hub_reference(weights):
            raise WeightsError(weights, "slide-encoder weights are not downloaded by the pipeline", hint)
        path = resolve_weights(weights)
        assert not isinstance(path, str)
        with torch.device("meta"):
            model = spec.builder(d_in)
        expected = model.state_dict()
        if not expected:
            raise WeightsError(path, f"slide encoder '{name}' has no parameters to load", hint)
        state = strip_prefixes(read_state_dict(path), expected)
        if spec.adapt is not None:
            state = spec.adapt(state)
        problem = describe_mismatch(state, expected)
        if problem:
            raise WeightsError(path, f"weights do not fit slide encoder '{name}' ({spec.architecture}, for "
                                     f"{d_in}-d features): {problem}", hint)
        model = _seeded(spec.builder, d_in)
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
        loaded = {"weights": str(path), "weights_sha256": hash_file(path)}
    model.requires_grad_(False)
    return model.eval(), loaded


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model``, shared ones once."""
    return sum(p.numel() for p in model.parameters())


def _register_builtins() -> None:
    specs = [
        SlideZooSpec("mean", "mean pooling of the patch features", None, None, None, 0,
                     "no parameters", True, lambda d: MeanPooling(),
                     reference="TRIDENT mean-<encoder> baselines"),
        SlideZooSpec("titan", "TITAN: ALiBi ViT (6 x 768-d, 12 heads) + CoCa attentional pooling",
                     "conch_v15", 768, 768, 48_539_904,
                     "the published vision_config (depth 6, 768-d, 12 heads, parallel poolers 128/1 queries, "
                     "8 heads) and code; the paper's count not confirmed", False,
                     lambda d: TitanSlideEncoder(d),
                     published_weights="'model.safetensors' of the gated hub repository MahmoodLab/TITAN",
                     adapt=_keep_under("vision_encoder."), needs_coords=True,
                     reference="Ding et al., Nature Medicine 2025"),
        SlideZooSpec("prism", "PRISM Perceiver resampler (513 latents x 1280-d, 8 layers, shared weights)",
                     "virchow", 2560, 1280, 99_037_440,
                     "the published perceiver_config and code; not confirmed against a paper count", False,
                     lambda d: PrismSlideEncoder(d),
                     published_weights="'model.safetensors' of the gated hub repository paige-ai/Prism",
                     adapt=_keep_under("image_resampler."), reference="Shaikovski et al., arXiv 2405.10254"),
        SlideZooSpec("chief", "CHIEF gated-attention MIL (768 -> 512 -> 256)", "ctranspath", 768, 768, 1_185_032,
                     "the authors' code (CHIEF size 'small'); the paper states no count", False,
                     lambda d: ChiefSlideEncoder(d),
                     published_weights="'CHIEF_pretraining.pth' of hms-dbmi/CHIEF (Google Drive link in its README)",
                     reference="Wang et al., Nature 2024"),
        SlideZooSpec("feather", "FEATHER-24K ABMIL base (768 -> 512, gated attention 384)", "conch_v15", 768, 512,
                     788_097, "MIL-Lab code (abmil base); its README rounds all FEATHER-24K to 0.9M", False,
                     lambda d: FeatherSlideEncoder(d),
                     published_weights="the gated hub repository MahmoodLab/abmil.base.conch_v15.pc108-24k",
                     adapt=_drop_under("classifier."), reference="Shao et al., ICML 2025"),
        SlideZooSpec("feather_uni_v2", "FEATHER-24K ABMIL base (1536 -> 512, gated attention 384)", "uni2_h", 1536,
                     512, 1_181_313, "MIL-Lab code (abmil base); its README rounds all FEATHER-24K to 0.9M", False,
                     lambda d: FeatherSlideEncoder(d),
                     published_weights="the gated hub repository MahmoodLab/abmil.base.uni_v2.pc108-24k",
                     adapt=_drop_under("classifier."), reference="Shao et al., ICML 2025"),
        SlideZooSpec("madeleine", "MADELEINE multi-head ABMIL (4 heads x 512-d)", "conch_vision", 512, 512,
                     4_996_740, "the authors' code with the launch script's config (4 heads, 512-d); not "
                     "confirmed against the hub's model_config.json", False,
                     lambda d: MadeleineSlideEncoder(d),
                     published_weights="'model.pt' of the hub repository MahmoodLab/madeleine",
                     reference="Jaume et al., ECCV 2024"),
        SlideZooSpec("gigapath_slide", "Prov-GigaPath LongNetViT (12 layers, 768-d, dilated attention)",
                     "gigapath", 1536, 768, 86_330_880, "Prov-GigaPath slide encoder, 86M", True, _gigapath,
                     published_weights="'slide_encoder.pth' of the gated hub repository prov-gigapath/prov-gigapath",
                     adapt=_under_slide_encoder, needs_coords=True, reference="Xu et al., Nature 2024"),
        SlideZooSpec("tiny_slide", "seeded pre-norm transformer (2 blocks, 64-d): a stand-in for tests", None, None,
                     64, 0, "depends on the feature width", False, _tiny, adapt=_under_slide_encoder,
                     needs_coords=True),
    ]
    for spec in specs:
        register_slide_zoo(spec)


_register_builtins()


def describe_entries() -> list[Mapping[str, object]]:
    """One row per entry (for the catalog and the README table)."""
    return [{"name": s.name, "patch_encoder": s.patch_encoder, "d_in": s.d_in, "embed_dim": s.embed_dim,
             "n_params": s.n_params, "params_published": s.params_published, "architecture": s.architecture,
             "weights": s.published_weights} for _, s in SLIDE_ZOO.items()]
