"""The CONCH text tower: the published sizes and checkpoint key names on the meta device, the reference's causal +
CLS padding mask against its rule written out, strict loading from a local CoCa-style checkpoint (wrapper,
``module.`` prefix and the vision tensors ignored; a missing or misshapen text tensor fails naming the file),
and a real byte-level BPE tokenizer file driving the encoder (windows, normalisation, determinism)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pathmm_pipeline.core.errors import ConfigError
from pathmm_pipeline.encoders.conch_text import (
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    ConchTextConfig,
    ConchTextEncoder,
    ConchTextTower,
    attention_mask,
    load_text_tower,
)
from pathmm_pipeline.encoders.text import create_text_encoder, list_text_encoders
from pathmm_pipeline.encoders.text_windows import EncoderLoadError

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = ConchTextConfig(context_length=64, vocab_size=300, width=32, heads=4, layers=2, embed_dim=24)
CORPUS = ["Cancer location: bladder urothelial; Cancer diagnosis: Bladder Urothelial Carcinoma;",
          "Overall stage: stage three; Tumor stage status: tumor stage two; Lymph node status: node stage one;",
          "Survival status: The patient died between 12 and 24 months", "Distant metastasis status: no metastasis"]


def test_published_sizes_and_key_names_on_the_meta_device():
    config = ConchTextConfig()
    assert (config.context_length, config.vocab_size, config.width, config.heads, config.layers,
            config.embed_dim) == (128, 32007, 768, 12, 12, 512)
    with torch.device("meta"):
        tower = ConchTextTower(config)
    w, h = 768, 3072
    block = 2 * 2 * w + (3 * w * w + 3 * w) + (w * w + w) + (w * h + h) + (h * w + w)
    expected = 32007 * w + 128 * w + w + 12 * block + 2 * w + w * 512
    assert sum(p.numel() for p in tower.parameters()) == expected
    shapes = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    assert shapes["cls_emb"] == (768,) and shapes["positional_embedding"] == (128, 768)
    assert shapes["text_projection"] == (768, 512) and shapes["token_embedding.weight"] == (32007, 768)
    assert shapes["transformer.resblocks.11.attn.in_proj_weight"] == (2304, 768)
    assert shapes["transformer.resblocks.0.mlp.c_fc.weight"] == (3072, 768)
    assert {"ln_final.weight", "transformer.resblocks.0.ln_1.bias", "transformer.resblocks.0.attn.out_proj.bias",
            "transformer.resblocks.0.mlp.c_proj.weight", "transformer.resblocks.0.ln_2.weight"} <= set(shapes)


def test_mask_is_causal_and_the_cls_row_follows_the_reference_rule():
    ids = torch.tensor([[1, 7, 9, 2, 0, 0], [1, 5, 5, 5, 5, 2]])  # (N, L - 1): the text tokens without the CLS
    mask = attention_mask(ids, heads=2)
    length = ids.shape[1] + 1
    assert mask.shape == (4, length, length)
    for n in range(2):
        m = mask[2 * n]
        assert torch.equal(mask[2 * n], mask[2 * n + 1])  # the same for every head
        for i in range(length):
            for j in range(length):
                allowed = j <= i
                if i == length - 1 and j >= 1:  # the CLS row: key j needs token j - 1 to be no padding
                    allowed = allowed and bool(ids[n, j - 1] != 0)
                assert (m[i, j] == 0) == allowed and (m[i, j] == float("-inf")) == (not allowed)


def _checkpoint(tmp_path, config=TINY, drop=None, reshape=None, wrap=True):
    torch.manual_seed(0)
    tower = ConchTextTower(config)
    state = {f"module.text.{k}": v for k, v in tower.state_dict().items()}
    state["module.visual.trunk.cls_token"] = torch.zeros(1, 1, 8)  # other towers are ignored
    state["module.logit_scale"] = torch.tensor(2.0)
    if drop:
        state.pop(f"module.text.{drop}")
    if reshape:
        state[f"module.text.{reshape}"] = torch.zeros(3)
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": state} if wrap else state, path)
    return tower, path


def test_strict_loading_from_a_local_checkpoint(tmp_path):
    tower, path = _checkpoint(tmp_path)
    loaded = load_text_tower(path, TINY)
    assert all(torch.equal(a, b) for a, b in zip(tower.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(EncoderLoadError, match=r"pytorch_model.bin.*missing text.ln_final.weight"):
        load_text_tower(_checkpoint(tmp_path, drop="ln_final.weight")[1], TINY)
    with pytest.raises(EncoderLoadError, match=r"shape of text.cls_emb \(3,\) != \(32,\)"):
        load_text_tower(_checkpoint(tmp_path, reshape="cls_emb")[1], TINY)
    with pytest.raises(EncoderLoadError, match="missing text.transformer.resblocks.2"):
        load_text_tower(_checkpoint(tmp_path)[1], replace(TINY, layers=3))
    torch.save({"visual.x": torch.zeros(1)}, tmp_path / "vision_only.bin")
    with pytest.raises(EncoderLoadError, match="no text"):
        load_text_tower(tmp_path / "vision_only.bin", TINY)


def _tokenizer_file(folder):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    specials = [SPECIAL_TOKENS["pad"], SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"]]
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=TINY.vocab_size, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{specials[1]} $A {specials[2]}", special_tokens=[(specials[1], 1), (specials[2], 2)])
    tok.save(str(folder / TOKENIZER_FILE))


def test_encoder_from_a_local_folder(tmp_path):
    tower, _ = _checkpoint(tmp_path)
    _tokenizer_file(tmp_path)
    enc = ConchTextEncoder(tmp_path, config=TINY, batch_size=2, overlap=4)
    assert "conch" in list_text_encoders() and enc.tokenizer.pad_token_id == 0
    assert (enc.tokenizer.bos_token_id, enc.tokenizer.eos_token_id) == (1, 2)
    emb = enc.embed(CORPUS)
    assert emb.shape == (4, TINY.embed_dim) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.array_equal(emb, enc.embed(CORPUS)) and not np.allclose(emb[0], emb[1])
    # a short text is one window: start, content, end, padding, the CLS slot -- the tower on exactly those ids
    content = enc.tokenize(CORPUS[2])
    assert len(content) <= enc.window == TINY.context_length - 3
    ids = enc.window_ids([content])
    assert ids.shape == (1, 64) and ids[0, 0] == 1 and ids[0, len(content) + 1] == 2 and ids[0, -1] == 0
    with torch.no_grad():
        assert np.allclose(tower(ids)[0].numpy()[0], emb[2], atol=1e-6)
    # accents and case do not matter (the tokenizer normalises); long texts are windows averaged
    assert np.allclose(enc.embed(["SURVIVAL STATUS: the patient died between 12 and 24 months"])[0], emb[2],
                       atol=1e-6)
    long = " ".join(CORPUS * 3)
    encoded = enc.encode([long])[0]
    assert len(encoded.window_tokens) > 1 and max(encoded.window_tokens) == enc.window
    described = enc.describe()
    assert described["weights_sha256"] and described["config"]["width"] == 32
    with pytest.raises(ConfigError, match="keep_tokens: false"):
        enc.encode(CORPUS, keep_tokens=True)
    # the registered builder needs the folder; missing files are named
    with pytest.raises(ConfigError, match="needs path"):
        create_text_encoder("conch")
    (tmp_path / TOKENIZER_FILE).unlink()
    with pytest.raises(EncoderLoadError, match=TOKENIZER_FILE):
        ConchTextEncoder(tmp_path, config=TINY)
