"""Frozen slide-level foundation encoders, for methods that tune them with adapters (ModalTune).

A slide encoder maps one slide's patch features ``x`` (N, D_in) and their level-0 coordinates ``coords``
(N, 2) to a token sequence, in three steps that adapters can be inserted between:

* :meth:`SlideEncoder.embed` -- ``(1, T, E)`` tokens: a learned [CLS] token followed by the N projected
  patches plus their position embedding (T = N + 1; ``n_prefix = 1`` token before the patches);
* :attr:`SlideEncoder.blocks` -- an ``nn.ModuleList`` of transformer blocks, each ``(1, T, E) -> (1, T, E)``;
* :meth:`SlideEncoder.finalize` -- the encoder's closing normalisation(s), ``(1, T, E) -> (1, T, E)``; token 0
  of the result is the slide embedding.

``forward(x, coords)`` runs all three. :func:`build_slide_encoder` returns an encoder that is **frozen**:
``requires_grad`` is False on every parameter and the module stays in eval mode even when a parent calls
``.train()`` (so no dropout / drop-path runs inside it, and its weights can never change).

Registry (name -> :class:`SlideEncoderSpec`), same pattern as the patch encoders of
:mod:`pathmm_pipeline.encoders` (weights are read with :func:`~pathmm_pipeline.encoders.weights.read_state_dict`,
wrapper prefixes stripped, and loaded **strictly**; a checkpoint that does not fit raises
:class:`~pathmm_pipeline.encoders.weights.WeightsError` naming the file and the first missing / unexpected /
mis-shaped keys):

* ``gigapath_slide`` -- the Prov-GigaPath slide encoder (Xu et al., Nature 2024; ``gigapath_slide_enc12l768d``):
  ``patch_embed.proj`` Linear(1536 -> 768) on the Prov-GigaPath tile features; a fixed 2-D sin-cos position
  embedding of each tile's grid cell ``floor(coords / 256)`` (the published 1000 x 1000 grid table, computed on
  the fly for the cells present instead of materialising its 10^6 x 768 buffer; the [CLS] token's position row
  is zero); a LongNet encoder of 12 pre-norm layers (768-d, 16 heads, FFN 3072, GELU, torchscale's sub-LN:
  a LayerNorm on the attention output before ``out_proj`` and on the FFN hidden layer), whose self-attention is
  **dilated attention** with segment lengths ``[1024, 5792, 32768, 185363, 1048576]`` (GigaPath's
  ``get_optimal_segment_length(262144, 256)``) and dilation ratios ``[1, 2, 4, 8, 16]`` (see
  :func:`dilated_attention`); then the encoder's final LayerNorm (eps 1e-5) and the ViT ``norm`` (eps 1e-6).
  86,330,880 parameters. Its key names are those of the published checkpoint, so the file loads strictly. The
  weights are on the Hugging Face hub as ``slide_encoder.pth`` in the gated repository
  ``prov-gigapath/prov-gigapath`` (the state dict is nested under ``"model"``, which the reader unwraps). **No
  weights are downloaded here**: download the file where the hub is reachable (after accepting the licence) and
  pass its local path (``slide_weights`` of ModalTune). Without weights the encoder is randomly initialised
  (xavier-uniform Linear layers, as GigaPath's own init) and only useful for shape tests.
* ``tiny_slide`` -- a small standard pre-norm transformer (2 blocks, 64-d, 4 heads, MLP 128, GELU) with the
  same [CLS] + sin-cos position embedding. It is randomly initialised with a **fixed seed** (0, drawn from a
  private generator state, so building it neither depends on nor disturbs torch's global RNG): for the demo and
  the tests it stands in for a pretrained slide model. Being frozen, it is a fixed random feature map, and
  ModalTune's adapters (and head) do all the learning.

Both accept any tile-feature width ``d_in`` (the patch projection is sized from it); published GigaPath weights
need ``d_in = 1536`` (a different width is reported as a shape mismatch of ``patch_embed.proj.weight``).

Coordinates: the grid cell of a tile is ``floor(coords / 256)`` as in GigaPath, whose coordinates are pixels at
the tiles' own magnification (20x, 256-px tiles). The pipeline's ``wsi_coords`` are level-0 pixels, so for a
40x scan every cell index is doubled: the sin-cos embedding is still a smooth function of position, but not the
exact one GigaPath was trained with -- pass coordinates scaled to 0.5 mpp for published weights.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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

_NAME = re.compile(r"^[A-Za-z0-9_]+$")

#: the tile size GigaPath divides coordinates by to get grid cells
GIGAPATH_TILE_PX = 256
#: the hub repository and file of the published slide-encoder weights (not downloaded here)
GIGAPATH_HUB_REPO = "prov-gigapath/prov-gigapath"
GIGAPATH_HUB_FILE = "slide_encoder.pth"
GIGAPATH_DILATED_RATIOS = (1, 2, 4, 8, 16)
#: elements of one chunk of attention scores (bounds the memory of long slides)
_SCORE_CHUNK = 1 << 25


def gigapath_segment_lengths(max_wsi_size: int = 262144, tile_size: int = 256) -> tuple[int, ...]:
    """GigaPath's ``LongNetViT.get_optimal_segment_length``: 5 lengths log-spaced from 1024 to the number of
    tiles of the largest slide, ``(max_wsi_size // tile_size) ** 2``; the defaults give
    ``(1024, 5792, 32768, 185363, 1048576)``."""
    max_seq_len = (max_wsi_size // tile_size) ** 2
    lengths = np.power(2, np.linspace(np.log2(1024), int(np.log2(max_seq_len)), 5)).astype(int)
    return tuple(int(v) for v in lengths)


GIGAPATH_SEGMENT_LENGTHS = gigapath_segment_lengths()


class UnknownSlideEncoderError(UnknownEntryError):
    """A slide-encoder name that is not registered."""


class DuplicateSlideEncoderError(DuplicateEntryError):
    """A slide encoder registered under a name that is already taken."""


# --------------------------------------------------------------------------------------------- positions


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """MAE's 1-D sin-cos embedding: ``(n,)`` positions -> ``(n, dim)`` = [sin(p * w), cos(p * w)],
    ``w_i = 1 / 10000 ** (i / (dim / 2))``; computed in float64 as the published numpy table."""
    if dim % 2:
        raise ValueError(f"a sin-cos embedding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = pos.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def grid_sincos_2d(dim: int, coords: torch.Tensor, tile_size: int = GIGAPATH_TILE_PX) -> torch.Tensor:
    """GigaPath's 2-D sin-cos position of each tile: cells ``(c0, c1) = floor(coords / tile_size)`` ->
    ``[sincos_1d(dim / 2, c1), sincos_1d(dim / 2, c0)]`` (row ``c0 * 1000 + c1 + 1`` of the published
    ``get_2d_sincos_pos_embed(dim, 1000, cls_token=True)`` table); ``(N, 2) -> (N, dim)`` float64."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    cells = torch.floor(coords.to(torch.float64) / tile_size)
    return torch.cat([sincos_1d(dim // 2, cells[:, 1]), sincos_1d(dim // 2, cells[:, 0])], dim=1)


# --------------------------------------------------------------------------------------------- base class


class SlideEncoder(nn.Module):
    """Base class: ``embed`` -> ``blocks`` -> ``finalize`` (see the module docstring).

    Subclasses set ``embed_dim`` and implement :meth:`embed`, :attr:`blocks` and :meth:`finalize`. While
    ``frozen`` is True (:func:`build_slide_encoder` sets it), :meth:`train` keeps the module in eval mode.
    """

    n_prefix: int = 1

    def __init__(self) -> None:
        super().__init__()
        self.embed_dim = 0
        self.frozen = False
        #: what was loaded (resolved path) and its sha256; None for a seeded / random init
        self.weights_source: str | None = None
        self.weights_sha256: str | None = None

    @property
    def blocks(self) -> nn.ModuleList:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def embed(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def finalize(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """``(1, T, E)`` output tokens (token 0 is the slide embedding)."""
        h = self.embed(x, coords)
        for block in self.blocks:
            h = block(h)
        return self.finalize(h)

    def train(self, mode: bool = True) -> SlideEncoder:
        return super().train(mode and not self.frozen)

    def freeze(self) -> SlideEncoder:
        """``requires_grad = False`` everywhere and eval mode for good."""
        self.requires_grad_(False)
        self.frozen = True
        return self.eval()

    @staticmethod
    def _inputs(x: torch.Tensor, coords: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, D)`` features and ``(N, 2)`` coordinates (a leading batch of one is dropped)."""
        x = x.reshape(-1, x.shape[-1])
        if coords is None:
            raise ValueError("a slide encoder needs the patches' coordinates (wsi_coords)")
        coords = coords.reshape(-1, coords.shape[-1])
        if coords.shape != (x.shape[0], 2):
            raise ValueError(f"coords have shape {tuple(coords.shape)}, expected ({x.shape[0]}, 2): one (x, y) "
                             f"per patch")
        return x, coords


# --------------------------------------------------------------------------------------------- dilated attention


def _branch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment: int, ratio: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """One (segment length, dilation ratio) branch of dilated attention.

    ``q, k, v`` (B, L, H, d). The sequence is zero-padded to a multiple of ``g = min(segment, L)`` and cut
    into segments of ``g``; each segment is zero-padded to a multiple of ``ratio``; the heads are split into
    ``ratio`` groups and group ``j`` keeps the positions ``j, j + ratio, ...`` of every segment
    (torchscale's ``dense_to_sparse``); softmax attention runs within each (segment, head) over the kept
    positions -- the zero padding takes part as keys, as in torchscale, where nothing masks it. Returns the
    dense output (B, L, H, d), zero where a (position, head) was not computed, and its log-sum-exp (B, L, H),
    ``-inf`` there.
    """
    b, length, heads, d = q.shape
    g = min(segment, length)
    n = math.ceil(length / g)
    m = math.ceil(g / ratio)
    hp = math.ceil(heads / ratio) * ratio
    hg = hp // ratio

    def sparse(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (0, 0, 0, 0, 0, n * g - length)).reshape(b * n, g, heads, d)
        t = F.pad(t, (0, 0, 0, hp - heads, 0, m * ratio - g))                 # (bn, m*r, hp, d)
        t = t.reshape(b * n, m, ratio, ratio, hg, d)                          # position l*r + r1, head r2*hg + h
        t = torch.diagonal(t, dim1=2, dim2=3)                                 # (bn, m, hg, d, r): r1 == r2
        return t.permute(0, 4, 2, 1, 3).reshape(b * n, hp, m, d)[:, :heads]  # (bn, H, m, d), heads in (r h) order

    qs, ks, vs = sparse(q), sparse(k), sparse(v)
    scale = d ** -0.5
    flat_q, flat_k, flat_v = (t.reshape(-1, m, d) for t in (qs, ks, vs))
    step = max(1, _SCORE_CHUNK // max(1, m * m))
    outs, lses = [], []
    for s in range(0, flat_q.shape[0], step):
        scores = (flat_q[s:s + step] * scale) @ flat_k[s:s + step].transpose(1, 2)
        lses.append(torch.logsumexp(scores, dim=-1))
        outs.append(torch.softmax(scores, dim=-1) @ flat_v[s:s + step])
    out = torch.cat(outs).reshape(b * n, heads, m, d)
    lse = torch.cat(lses).reshape(b * n, heads, m)

    # back to dense (torchscale's sparse_to_dense): the output of head r2*hg + h at position l*r + r2
    out = F.pad(out, (0, 0, 0, 0, 0, hp - heads)).reshape(b * n, ratio, hg, m, d)
    lse = F.pad(lse, (0, 0, 0, hp - heads)).reshape(b * n, ratio, hg, m)
    out = torch.diag_embed(out.permute(0, 3, 2, 4, 1), dim1=-2, dim2=-1)    # (bn, m, hg, d, r1, r2)
    out = out.permute(0, 1, 4, 5, 2, 3).reshape(b * n, m * ratio, hp, d)
    eye = torch.eye(ratio, dtype=torch.bool, device=q.device)
    lse = torch.diag_embed(lse.permute(0, 3, 2, 1), dim1=-2, dim2=-1)       # (bn, m, hg, r1, r2)
    lse = lse.permute(0, 1, 3, 4, 2).reshape(b * n, m * ratio, hp)
    lse = lse.masked_fill(~eye.repeat(m, 1).repeat_interleave(hg, dim=1)[None], float("-inf"))
    # drop the ratio padding of each segment before joining the segments, then the sequence padding
    out = out[:, :g, :heads].reshape(b, n * g, heads, d)[:, :length]
    lse = lse[:, :g, :heads].reshape(b, n * g, heads)[:, :length]
    return out, lse


def dilated_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_lengths: Sequence[int],
                      dilated_ratios: Sequence[int]) -> torch.Tensor:
    """LongNet's dilated attention (Ding et al. 2023; torchscale ``DilatedAttention``), in plain PyTorch.

    ``q, k, v`` (B, L, H, d) -> (B, L, H, d). Each ``(segment_lengths[i], dilated_ratios[i])`` branch
    (:func:`_branch`) attends within segments over every ``ratio``-th position, a different offset per head
    group; a query's outputs from the branches that computed it are mixed with weights
    ``softmax_i(lse_i)`` -- which makes the result the attention over the union of those key sets -- and, as in
    torchscale (which computes them under ``no_grad``), the weights are detached. With one branch of dilation 1
    and a segment at least as long as the sequence this is ordinary softmax attention.

    One deliberate difference: torchscale joins the segments of a branch without removing the ratio padding of
    each segment, which shifts positions when a segment length is not a multiple of its ratio *and* the
    sequence spans several segments (with GigaPath's lengths: the 185,363 / ratio-8 branch on slides of more
    than 185,363 tiles); here the padding is removed first, so positions stay aligned.
    """
    if len(segment_lengths) != len(dilated_ratios) or not segment_lengths:
        raise ValueError(f"need as many segment lengths as dilation ratios (>= 1), got {list(segment_lengths)} "
                         f"and {list(dilated_ratios)}")
    outs, lses = zip(*(_branch(q, k, v, int(s), int(r)) for s, r in zip(segment_lengths, dilated_ratios)))
    weights = torch.softmax(torch.stack(lses), dim=0).detach()              # (branches, B, L, H)
    weights = torch.nan_to_num(weights, nan=0.0)  # a position no branch computed (no ratio-1 branch) gets zero
    return sum(w.unsqueeze(-1).to(o.dtype) * o for w, o in zip(weights, outs))


# --------------------------------------------------------------------------------------------- Prov-GigaPath


class PatchEmbed(nn.Module):
    """GigaPath's slide patch embedding: ``proj`` Linear(d_in, E) (its ``norm`` is the identity)."""

    def __init__(self, d_in: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class DilatedSelfAttention(nn.Module):
    """torchscale ``DilatedAttention`` as a self-attention: q/k/v projections, :func:`dilated_attention`,
    the sub-LN ``inner_attn_ln`` and ``out_proj``."""

    def __init__(self, dim: int, heads: int, segment_lengths: Sequence[int], dilated_ratios: Sequence[int],
                 eps: float = 1e-5) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.segment_lengths = tuple(int(s) for s in segment_lengths)
        self.dilated_ratios = tuple(int(r) for r in dilated_ratios)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.inner_attn_ln = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = (p(x).view(b, length, self.heads, dim // self.heads) for p in (self.q_proj, self.k_proj,
                                                                                  self.v_proj))
        attn = dilated_attention(q, k, v, self.segment_lengths, self.dilated_ratios).reshape(b, length, dim)
        return self.out_proj(self.inner_attn_ln(attn))


class LongNetFFN(nn.Module):
    """torchscale ``FeedForwardNetwork`` with sub-LN: fc1 -> GELU -> ``ffn_layernorm`` -> fc2."""

    def __init__(self, dim: int, hidden: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.ffn_layernorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.ffn_layernorm(F.gelu(self.fc1(x))))


class LongNetLayer(nn.Module):
    """One pre-norm LongNet encoder layer: ``x + attn(LN x)``, then ``x + ffn(LN x)`` (dropout and drop-path
    of the published layer are inactive: the encoder is only ever run frozen, in eval mode)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, segment_lengths: Sequence[int],
                 dilated_ratios: Sequence[int], eps: float = 1e-5) -> None:
        super().__init__()
        self.self_attn = DilatedSelfAttention(dim, heads, segment_lengths, dilated_ratios, eps)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn = LongNetFFN(dim, ffn_dim, eps)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.ffn(self.final_layer_norm(x))


class LongNetEncoder(nn.Module):
    """The torchscale encoder's parameters: ``layers`` and the output ``layer_norm``."""

    def __init__(self, dim: int, depth: int, heads: int, ffn_dim: int, segment_lengths: Sequence[int],
                 dilated_ratios: Sequence[int], eps: float = 1e-5) -> None:
        super().__init__()
        self.layers = nn.ModuleList(LongNetLayer(dim, heads, ffn_dim, segment_lengths, dilated_ratios, eps)
                                    for _ in range(depth))
        self.layer_norm = nn.LayerNorm(dim, eps=eps)


class GigaPathSlideEncoder(SlideEncoder):
    """Prov-GigaPath's ``LongNetViT`` (see the module docstring); the defaults are the published
    ``gigapath_slide_enc12l768d`` (smaller sizes only for tests)."""

    def __init__(self, d_in: int = 1536, embed_dim: int = 768, depth: int = 12, heads: int = 16,
                 ffn_dim: int | None = None, segment_lengths: Sequence[int] = GIGAPATH_SEGMENT_LENGTHS,
                 dilated_ratios: Sequence[int] = GIGAPATH_DILATED_RATIOS,
                 tile_size: int = GIGAPATH_TILE_PX) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.tile_size = tile_size
        self.patch_embed = PatchEmbed(d_in, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.encoder = LongNetEncoder(embed_dim, depth, heads, 4 * embed_dim if ffn_dim is None else ffn_dim,
                                      segment_lengths, dilated_ratios)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        # GigaPath's initialize_vit_weights: xavier-uniform Linear (zero bias), unit LayerNorm, cls ~ N(0, 0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.layers

    def embed(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        x, coords = self._inputs(x, coords)
        h = self.patch_embed(x) + grid_sincos_2d(self.embed_dim, coords, self.tile_size).to(x.dtype)
        return torch.cat([self.cls_token.to(h.dtype)[0], h]).unsqueeze(0)  # the cls position row is zero

    def finalize(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.encoder.layer_norm(h))


# --------------------------------------------------------------------------------------------- tiny transformer


class TransformerBlock(nn.Module):
    """Pre-norm transformer block with explicit softmax attention (the same arithmetic whether or not grads
    are required, unlike PyTorch's fused encoder-layer fast path)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q * (dim // self.heads) ** -0.5) @ k.transpose(-1, -2), dim=-1) @ v
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, dim))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinySlideEncoder(SlideEncoder):
    """A small pre-norm transformer slide encoder (the ``tiny_slide`` stand-in; see the module docstring)."""

    def __init__(self, d_in: int, embed_dim: int = 64, depth: int = 2, heads: int = 4, mlp_dim: int = 128,
                 tile_size: int = GIGAPATH_TILE_PX) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.tile_size = tile_size
        self.patch_embed = nn.Linear(d_in, embed_dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.layers = nn.ModuleList(TransformerBlock(embed_dim, heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.layers

    def embed(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        x, coords = self._inputs(x, coords)
        h = self.patch_embed(x) + grid_sincos_2d(self.embed_dim, coords, self.tile_size).to(x.dtype)
        return torch.cat([self.cls_token.to(h.dtype)[0], h]).unsqueeze(0)

    def finalize(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h)


TINY_SLIDE_SEED = 0


def _build_tiny(d_in: int) -> TinySlideEncoder:
    with torch.random.fork_rng(devices=[]):  # a fixed seed without touching the caller's RNG stream
        torch.manual_seed(TINY_SLIDE_SEED)
        return TinySlideEncoder(d_in)


# --------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class SlideEncoderSpec:
    """A registered slide encoder: ``builder(d_in)`` builds the (randomly / seeded initialised) architecture."""

    name: str
    architecture: str
    embed_dim: int
    depth: int
    builder: Callable[[int], SlideEncoder]
    #: the tile-feature width the published weights expect (None: any)
    d_in: int | None = None
    #: where the published weights are (text for messages; never downloaded here)
    published_weights: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"slide encoder name '{self.name}' must be letters, digits and underscores only")
        if not callable(self.builder):
            raise ValueError(f"slide encoder spec '{self.name}': builder must be callable")


#: the slide encoders by name
SLIDE_ENCODERS: Registry[SlideEncoderSpec] = Registry(
    "slide encoder", unknown=UnknownSlideEncoderError, duplicate=DuplicateSlideEncoderError,
    describe=lambda spec: spec.architecture, same_again=False)


def register_slide_encoder(spec: SlideEncoderSpec, *, replace: bool = False) -> SlideEncoderSpec:
    """Register a :class:`SlideEncoderSpec`; a taken name raises unless ``replace=True``."""
    if not isinstance(spec, SlideEncoderSpec):
        raise TypeError(f"register_slide_encoder takes a SlideEncoderSpec, not {type(spec).__name__}")
    return SLIDE_ENCODERS.register(spec.name, spec, replace=replace)


def unregister_slide_encoder(name: str) -> SlideEncoderSpec:
    return SLIDE_ENCODERS.remove(name)


def list_slide_encoders() -> list[str]:
    return SLIDE_ENCODERS.names()


def get_slide_encoder_spec(name: str) -> SlideEncoderSpec:
    return SLIDE_ENCODERS.get(name)


def build_slide_encoder(name: str, d_in: int, weights: str | os.PathLike[str] | None = None) -> SlideEncoder:
    """Slide encoder ``name`` for ``d_in``-wide tile features, **frozen** (no grads, eval mode for good).

    ``weights``: None (the builder's init: random for ``gigapath_slide``, seeded for ``tiny_slide``) or a
    local checkpoint file / folder holding one (``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors``; a state
    dict nested under ``"model"``/``"state_dict"`` is unwrapped, ``module.``/``model.``/``backbone.`` prefixes
    stripped). It is loaded strictly: a checkpoint that does not fit raises
    :class:`~pathmm_pipeline.encoders.weights.WeightsError` naming the file and the first offending keys. A
    hub reference (``hf_hub:...``) is refused: nothing is downloaded here.
    """
    spec = get_slide_encoder_spec(name)
    d_in = int(d_in)
    if d_in < 1:
        raise ValueError(f"slide encoder '{name}': d_in must be a positive width, got {d_in}")
    if weights is None:
        return spec.builder(d_in).freeze()
    if is_hub_reference(weights):
        raise WeightsError(weights, "slide-encoder weights are not downloaded by the pipeline",
                           _hint(spec, d_in))
    path = resolve_weights(weights)
    assert not isinstance(path, str)
    state = read_state_dict(path)
    with torch.device("meta"):
        model = spec.builder(d_in)
    expected = model.state_dict()
    state = strip_prefixes(state, expected)
    problem = describe_mismatch(state, expected)
    if problem:
        raise WeightsError(path, f"weights do not fit slide encoder '{name}' ({spec.architecture}, built for "
                                 f"{d_in}-d tile features): {problem}", _hint(spec, d_in))
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = spec.builder(d_in)
        model.load_state_dict(state, strict=True)
    model.weights_source, model.weights_sha256 = str(path), hash_file(path)
    return model.freeze()


def _hint(spec: SlideEncoderSpec, d_in: int) -> str:
    where = f"the published weights are {spec.published_weights}; " if spec.published_weights else ""
    width = (f" (they expect {spec.d_in}-d tile features, this run has {d_in}-d)"
             if spec.d_in is not None and spec.d_in != d_in else "")
    return (f"{where}download the file where the hub is reachable and pass its local path{width}, or choose the "
            f"slide encoder these weights belong to ({', '.join(list_slide_encoders())})")


register_slide_encoder(SlideEncoderSpec(
    name="gigapath_slide",
    architecture="Prov-GigaPath LongNetViT (12 layers, 768-d, 16 heads, dilated attention)",
    embed_dim=768, depth=12, builder=lambda d_in: GigaPathSlideEncoder(d_in), d_in=1536,
    published_weights=f"'{GIGAPATH_HUB_FILE}' of the gated hub repository {GIGAPATH_HUB_REPO} "
                      f"(https://huggingface.co/{GIGAPATH_HUB_REPO})",
    description="Prov-GigaPath slide encoder on 1536-d Prov-GigaPath tile features (Xu et al., Nature 2024)"))

register_slide_encoder(SlideEncoderSpec(
    name="tiny_slide", architecture="pre-norm transformer (2 blocks, 64-d, 4 heads)", embed_dim=64, depth=2,
    builder=_build_tiny,
    description="seeded random stand-in for a pretrained slide model (demo and tests)"))
