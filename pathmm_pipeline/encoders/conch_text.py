"""The CONCH text encoder (Lu et al., Nature Medicine 2024; mahmoodlab/CONCH), the text tower ModalTune embeds
its clinical sentences with, re-implemented in PyTorch and loaded strictly from local weights.

Architecture (``conch/open_clip_custom``: ``model_configs/conch_ViT-B-16.json``, ``transformer.py``
``TextTransformer``, ``coca_model.py`` ``CoCa._encode_text``): token embedding (32,007 x 768), a learned
positional embedding of the 128-token context, a learned CLS embedding **appended after** the 127 text tokens,
12 pre-LayerNorm residual blocks (``nn.MultiheadAttention`` 12 heads with biases, MLP 3,072 GELU), a causal
mask plus the CLS padding mask of open_clip's CoCa (the CLS query sees key 0 and key j when token j - 1 is not
padding: the reference's one-position shift, kept so the published weights behave as trained), ``ln_final`` on
the CLS token only, ``text_projection`` (768 x 512, a matrix), L2-normalised.

Tokeniser: the byte-level BPE of ``tokenizers/conch_byte_level_bpe_uncased.json`` (NFD, strip accents, lower
case; ``<pad>`` 0, ``<start_of_text>`` 1, ``<end_of_text>`` 2) through ``transformers.PreTrainedTokenizerFast``;
each window holds at most 125 content tokens between start and end, padded to 127, plus one pad slot (dropped
for the CLS), as the reference's ``tokenize``.

Local weights: a folder with the CoCa checkpoint (``pytorch_model.bin`` or ``model.safetensors``; a
``state_dict`` wrapper and ``module.`` prefixes are removed) and the tokenizer json; the ``text.*`` tensors are
loaded **strictly** (the reference loads with ``strict=False``; here a missing or unexpected text key, or a
wrong shape, fails naming the file). Nothing is downloaded. Long texts are cut into overlapping windows
(:func:`~pathmm_pipeline.encoders.text_windows.plan_windows`), averaged weighted by their content tokens.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pathmm_pipeline.core.errors import ConfigError
from pathmm_pipeline.core.provenance import hash_file
from pathmm_pipeline.encoders.text_windows import EncodedText, EncoderLoadError, plan_windows

TOKENIZER_FILE = "conch_byte_level_bpe_uncased.json"
CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin")
SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<start_of_text>", "eos": "<end_of_text>"}


@dataclass(frozen=True)
class ConchTextConfig:
    """The text tower's sizes (the published ``conch_ViT-B-16`` by default)."""

    context_length: int = 128
    vocab_size: int = 32007
    width: int = 768
    heads: int = 12
    layers: int = 12
    embed_dim: int = 512
    mlp_ratio: float = 4.0
    pad_id: int = 0


class _Block(nn.Module):
    """open_clip's ``ResidualAttentionBlock``: pre-LN attention and MLP, both residual."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, config: ConchTextConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_Block(config.width, config.heads, config.mlp_ratio)
                                       for _ in range(config.layers))


def attention_mask(ids: torch.Tensor, heads: int, pad_id: int = 0) -> torch.Tensor:
    """The additive (N * heads, L, L) mask of the reference for ``ids`` (N, L - 1) text tokens + the CLS: causal,
    and the CLS query (last row) sees key 0 and key j >= 1 when ``ids[:, j - 1]`` is not padding."""
    length = ids.shape[1] + 1
    causal = torch.full((length, length), float("-inf"), device=ids.device).triu_(1)
    keep = F.pad((ids != pad_id).unsqueeze(1), (1, 0, length - 1, 0), value=True)   # (N, L, L)
    cls = torch.zeros(keep.shape, device=ids.device).masked_fill_(~keep, float("-inf"))
    return (causal.unsqueeze(0) + cls).repeat_interleave(heads, dim=0)


class ConchTextTower(nn.Module):
    """CONCH's text transformer (see the module docstring); ``forward(ids)`` takes the (N, context_length) token
    ids of :meth:`ConchTextEncoder.tokenize` and returns ``(embedding (N, embed_dim) L2-normalised, token states
    (N, context_length - 1, width))``. Its ``state_dict`` keys are the checkpoint's ``text.*`` keys."""

    def __init__(self, config: ConchTextConfig = ConchTextConfig()) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.cls_emb = nn.Parameter(torch.empty(config.width))
        self.transformer = _Transformer(config)
        self.ln_final = nn.LayerNorm(config.width)
        self.text_projection = nn.Parameter(torch.empty(config.width, config.embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.cls_emb, std=0.01)
        nn.init.normal_(self.text_projection, std=config.width ** -0.5)

    def forward(self, ids: torch.Tensor, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        ids = ids[:, :-1]  # the last slot is the CLS's
        x = self.token_embedding(ids)
        x = torch.cat([x, self.cls_emb.to(x.dtype).expand(x.shape[0], 1, -1)], dim=1)
        x = x + self.positional_embedding[:x.shape[1]].to(x.dtype)
        mask = attention_mask(ids, self.config.heads, self.config.pad_id).to(x.dtype)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        pooled = self.ln_final(x[:, -1]) @ self.text_projection
        return (F.normalize(pooled, dim=-1) if normalize else pooled), x[:, :-1]


def read_text_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The ``text.*`` tensors of a CONCH checkpoint file, without the prefix (``state_dict`` wrapper and
    ``module.`` prefixes removed)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is named
        raise EncoderLoadError(path, f"cannot read the CONCH checkpoint: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EncoderLoadError(path, f"holds a {type(state).__name__}, not a state dict")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    return {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}


def load_text_tower(path: str | os.PathLike[str], config: ConchTextConfig = ConchTextConfig()) -> ConchTextTower:
    """A tower of ``config`` with the checkpoint's text weights, loaded strictly (errors name the file)."""
    state = read_text_state(path)
    if not state:
        raise EncoderLoadError(path, "has no text.* tensors: not a CONCH (CoCa) checkpoint")
    tower = ConchTextTower(config)
    own = tower.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        detail = "; ".join(part for part in (
            f"missing text.{', text.'.join(missing[:4])}" if missing else "",
            f"unexpected text.{', text.'.join(unexpected[:4])}" if unexpected else "",
            "shape of " + ", ".join(f"text.{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
                                    for k in shapes[:4]) if shapes else "") if part)
        raise EncoderLoadError(path, f"does not match the CONCH text tower {asdict(config)}: {detail}",
                               "give the official conch checkpoint (pytorch_model.bin) or matching sizes")
    tower.load_state_dict(state, strict=True)
    return tower.eval()


class ConchTextEncoder:
    """The CONCH text encoder from a local folder (checkpoint + tokenizer json): ``embed`` / ``encode`` texts as
    the pipeline's other text encoders do (512-d, L2-normalised). ``config`` sets other sizes (tests)."""

    name = "conch"

    def __init__(self, model_dir: str | os.PathLike[str], device: str = "cpu", batch_size: int = 16,
                 overlap: int = 32, config: ConchTextConfig = ConchTextConfig()) -> None:
        start = time.perf_counter()
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise EncoderLoadError(self.model_dir, "CONCH folder not found", "copy the official checkpoint "
                                   f"(pytorch_model.bin) and {TOKENIZER_FILE} here; nothing is downloaded")
        files = [self.model_dir / f for f in CHECKPOINT_FILES if (self.model_dir / f).is_file()]
        if not files:
            raise EncoderLoadError(self.model_dir, f"no CONCH checkpoint ({' or '.join(CHECKPOINT_FILES)})")
        tokenizer_file = self.model_dir / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            raise EncoderLoadError(self.model_dir, f"no {TOKENIZER_FILE}", "copy it from the CONCH repository "
                                   "(conch/open_clip_custom/tokenizers/)")
        from transformers import PreTrainedTokenizerFast

        self.tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), bos_token=SPECIAL_TOKENS["bos"],
                                                 eos_token=SPECIAL_TOKENS["eos"], pad_token=SPECIAL_TOKENS["pad"])
        self.config = config
        self.weights_file = files[0]
        self.weights_sha256 = hash_file(self.weights_file)
        self.tower = load_text_tower(self.weights_file, config)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.tower.to(self.device)
        self.dim = config.embed_dim
        self.window = config.context_length - 3          # start + content + end within context - 1 slots
        self.overlap = int(min(overlap, self.window // 2))
        self.batch_size = int(batch_size)
        self.load_seconds = time.perf_counter() - start

    def describe(self) -> dict[str, Any]:
        """What identifies this encoder's outputs (recorded in provenance)."""
        return {"name": self.name, "model_dir": str(self.model_dir), "architecture": "CONCH CoCa text tower",
                "config": asdict(self.config), "dim": self.dim, "pooling": "cls (appended)", "normalize": True,
                "window_tokens": self.window, "overlap_tokens": self.overlap,
                "weights_files": [self.weights_file.name], "weights_sha256": self.weights_sha256,
                "tokenizer_sha256": hash_file(self.model_dir / TOKENIZER_FILE)}

    def tokenize(self, text: str) -> list[int]:
        """Content token ids of the whole text (no special tokens, no truncation)."""
        return list(self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])

    def window_ids(self, content: Sequence[Sequence[int]]) -> torch.Tensor:
        """(N, context_length) ids: start, content, end, padding, and the CLS's pad slot."""
        cfg = self.config
        ids = torch.full((len(content), cfg.context_length), cfg.pad_id, dtype=torch.long)
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        for r, tokens in enumerate(content):
            seq = [bos, *list(tokens)[:self.window], eos]
            ids[r, :len(seq)] = torch.tensor(seq)
        return ids

    def encode(self, texts: Sequence[str], keep_tokens: bool = False) -> list[EncodedText]:
        """Embed each text (windows averaged by their content tokens, re-normalised)."""
        if keep_tokens:
            raise ConfigError("text encoder 'conch' keeps no token states (its 768-d tokens are not its 512-d "
                              "embedding space): set reports.keep_tokens: false")
        tokens = [self.tokenize(t) for t in texts]
        plans = [(i, s, e) for i, ids in enumerate(tokens) for s, e in plan_windows(len(ids), self.window,
                                                                                        self.overlap)]
        emb = np.zeros((len(plans), self.dim), np.float32)
        with torch.inference_mode():
            for b in range(0, len(plans), self.batch_size):
                part = plans[b:b + self.batch_size]
                ids = self.window_ids([tokens[i][s:e] for i, s, e in part]).to(self.device)
                emb[b:b + len(part)] = self.tower(ids)[0].float().cpu().numpy()
        out: list[EncodedText] = []
        for i, ids in enumerate(tokens):
            rows = [k for k, p in enumerate(plans) if p[0] == i]
            weights = np.array([max(plans[k][2] - plans[k][1], 1) for k in rows], np.float64)
            vec = (emb[rows] * weights[:, None]).sum(0) / weights.sum()
            vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
            out.append(EncodedText(vec.astype(np.float32), len(ids), [plans[k][2] - plans[k][1] for k in rows]))
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 512) float32 L2-normalised embeddings."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([e.embedding for e in self.encode(texts)])
