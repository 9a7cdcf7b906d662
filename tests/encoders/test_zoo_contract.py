"""Contract of every registered patch encoder, built on the meta device (no memory, no weights, no download):
the published parameter count, the output width by a forward pass at the spec's input size, sane transforms;
and the checkpoint adapters of the transformers-format encoders against transformers itself."""

from __future__ import annotations

import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathmm_pipeline.encoders import fit_state_dict, get_encoder_spec, list_encoders, zoo  # noqa: E402

# name: (output dim, published parameter count, relative tolerance, source of the count)
PUBLISHED = {
    "uni": (1024, 303e6, 0.01, "UNI card: ViT-L/16, 303M"),
    "uni2_h": (1536, 681e6, 0.01, "UNI2-h card: 681M"),
    "gigapath": (1536, 1.134e9, 0.01, "Prov-GigaPath tile encoder: 1.13B"),
    "virchow": (2560, 632e6, 0.01, "Virchow card: 632M"),
    "virchow2": (2560, 632e6, 0.01, "Virchow2 card: 632M"),
    "h_optimus_0": (1536, 1.134e9, 0.01, "H-optimus-0 card: 1.1B (ViT-g/14)"),
    "h_optimus_1": (1536, 1.134e9, 0.01, "H-optimus-1 card: 1.1B (ViT-g/14)"),
    "h0_mini": (768, 86e6, 0.01, "H0-mini (Filiot et al. 2025): ViT-B/14, 86M"),
    "conch_vision": (512, 87.6e6, 0.02, "ViT-B/16 at 448 (86.4M) + contrastive pooler and norm"),
    "conch_v15": (768, 306.7e6, 0.01, "ViT-L/16 at 448 (303.6M) + pooler 3.1M"),
    "phikon": (768, 85.8e6, 0.01, "Phikon: ViT-B/16, 86M"),
    "phikon_v2": (1024, 303e6, 0.01, "Phikon-v2: ViT-L/16, 300M"),
    "hibou_b": (768, 86e6, 0.01, "Hibou-B (Nechaev et al. 2024): 86M"),
    "hibou_l": (1024, 304e6, 0.01, "Hibou-L: 304M"),
    "kaiko_vits16": (384, 21.7e6, 0.01, "ViT-S/16: 22M"),
    "kaiko_vits8": (384, 21.7e6, 0.01, "ViT-S/8: 22M"),
    "kaiko_vitb16": (768, 85.8e6, 0.01, "ViT-B/16: 86M"),
    "kaiko_vitb8": (768, 85.8e6, 0.01, "ViT-B/8: 86M"),
    "kaiko_vitl14": (1024, 304e6, 0.01, "ViT-L/14 reg4 with its 518-px position table: 304M"),
    "lunit_vits8": (384, 21.7e6, 0.01, "Lunit DINO ViT-S/8: 22M"),
    "lunit_vits16": (384, 21.7e6, 0.01, "Lunit DINO ViT-S/16: 22M"),
    "ctranspath": (768, 27.5e6, 0.01, "CTransPath (Wang et al. 2022): 27.5M"),
    "midnight_12k": (3072, 1.134e9, 0.01, "Midnight-12k: ViT-g/14, 1.1B"),
    "gpfm": (1024, 303e6, 0.01, "GPFM: ViT-L/14, 303M"),
    "resnet50_trunc": (1024, 8.54e6, 0.01, "CLAM resnet50_baseline"),
    "efficientnet_lite0": (1280, 3.37e6, 0.01, "4.65M with the 1000-class classifier"),
    "mstar_efficientnet_lite0": (1280, 3.37e6, 0.01, "efficientnet_lite0 architecture"),
    "mstar_vit": (1024, 303e6, 0.01, "UNI's ViT-L/16"),
    "vit_tiny_test": (192, 5.49e6, 0.02, "ViT-Ti/16 at 64 px"),
}
TEST_ONLY = {"vit_tiny_test"}
IMAGENET_BASED = {"resnet50_trunc", "efficientnet_lite0", "mstar_efficientnet_lite0"}  # not pathology-trained


def test_every_registered_encoder_has_published_numbers():
    assert set(list_encoders()) == set(PUBLISHED), "add the new encoder's published numbers to PUBLISHED"
    assert len(set(PUBLISHED) - TEST_ONLY - IMAGENET_BASED) >= 24


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_encoder_contract_on_meta_device(name):
    spec = get_encoder_spec(name)
    dim, n_params, tol, _source = PUBLISHED[name]
    assert spec.embed_dim == dim
    assert 32 <= spec.input_size <= 1024
    assert all(0.0 <= m <= 1.0 for m in spec.mean) and all(0.05 <= s <= 1.0 for s in spec.std)
    assert spec.version and spec.architecture
    if spec.default_weights is not None:
        assert spec.default_weights.startswith(("hf_hub:", "package:"))
    with torch.device("meta"):
        model = spec.builder()
        out = model(torch.empty(2, 3, spec.input_size, spec.input_size))
    assert tuple(out.shape) == (2, dim)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - n_params) / n_params < tol, f"{name}: {count:,} parameters, published {n_params:,.0f}"


def _meta(name):
    with torch.device("meta"):
        return get_encoder_spec(name).builder()


def test_architecture_details_of_the_new_encoders():
    virchow = _meta("virchow")
    assert virchow.num_prefix_tokens == 1 and tuple(virchow.pos_embed.shape) == (1, 257, 1280)
    assert len(virchow.blocks) == 32 and virchow.blocks[0].mlp.fc1.out_features == 6832
    h0 = _meta("h0_mini")
    assert h0.num_reg_tokens == 4 and tuple(h0.pos_embed.shape) == (1, 256, 768) and len(h0.blocks) == 12
    conch = _meta("conch_v15")
    assert tuple(conch.trunk.pos_embed.shape) == (1, 785, 1024) and len(conch.trunk.blocks) == 24
    assert tuple(conch.attn_pool_contrast.query.shape) == (1, 768)
    assert tuple(conch.attn_pool_contrast.to_kv.weight.shape) == (1536, 1024)
    midnight = _meta("midnight_12k")
    assert len(midnight.blocks) == 40 and midnight.blocks[0].mlp.fc2.in_features == 4096
    assert tuple(_meta("kaiko_vitl14").pos_embed.shape) == (1, 37 * 37, 1024)
    assert _meta("kaiko_vits8").patch_embed.proj.kernel_size == (8, 8)
    assert _meta("hibou_l").num_reg_tokens == 4
    ctp = _meta("ctranspath")
    assert isinstance(ctp.patch_embed, zoo.ConvStem) and [len(s.blocks) for s in ctp.layers] == [2, 2, 6, 2]
    assert get_encoder_spec("phikon").builder().norm.eps == 1e-12


def test_conch_v15_pooler_is_multi_head_attention_over_the_tokens():
    torch.manual_seed(0)
    pool = zoo.ConchV15Pooler(d_model=16, context_dim=24, n_head=4, n_queries=1).eval()
    x = torch.randn(2, 5, 24)
    with torch.no_grad():
        out = pool(x)
        q = pool.to_q(pool.ln_q(pool.query))                                  # (1, 16)
        k, v = pool.to_kv(pool.ln_k(x)).chunk(2, dim=-1)                      # (2, 5, 16)
        heads = []
        for h in range(4):
            sl = slice(4 * h, 4 * h + 4)
            att = (q[:, sl] @ k[..., sl].transpose(1, 2) / math.sqrt(4)).softmax(-1)
            heads.append(att @ v[..., sl])
        expected = pool.to_out(torch.cat(heads, dim=-1))
    assert out.shape == (2, 1, 16)
    torch.testing.assert_close(out, expected)


def _tiny_timm(reg_tokens: int, **kw):
    from timm.models.vision_transformer import VisionTransformer

    args = dict(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=2, num_classes=0, global_pool="token",
                dynamic_img_size=True)
    if reg_tokens:
        args.update(reg_tokens=reg_tokens, no_embed_class=True)
    return VisionTransformer(**{**args, **kw}).eval()


@pytest.mark.parametrize("kind", ["vit", "dinov2", "dinov2_registers"])
def test_transformers_checkpoints_map_onto_the_timm_layout(kind):
    """A transformers ViT (Phikon), Dinov2 (Phikon-v2, Midnight) or Dinov2-with-registers (Hibou) model's state
    dict, adapted, gives the timm model the same class token output as transformers computes."""
    transformers = pytest.importorskip("transformers")
    from functools import partial

    torch.manual_seed(0)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
                  hidden_act="gelu")
    if kind == "vit":
        hf = transformers.ViTModel(transformers.ViTConfig(intermediate_size=128, **common), add_pooling_layer=False)
        timm_model = _tiny_timm(0, norm_layer=partial(torch.nn.LayerNorm, eps=1e-12))
    elif kind == "dinov2":
        hf = transformers.Dinov2Model(transformers.Dinov2Config(mlp_ratio=4, layerscale_value=0.5, **common))
        timm_model = _tiny_timm(0, init_values=0.5)
    else:
        hf = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
            mlp_ratio=4, layerscale_value=0.5, num_register_tokens=4, **common))
        timm_model = _tiny_timm(4, init_values=0.5)
    hf.eval()
    with torch.no_grad():  # non-trivial tokens and norms
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = zoo.adapt_hf_vit(dict(hf.state_dict()), timm_model.state_dict())
    spec = get_encoder_spec("hibou_b" if kind == "dinov2_registers" else "phikon")
    timm_model.load_state_dict(fit_state_dict(spec, state, timm_model.state_dict(), "hf.safetensors"), strict=True)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = hf(pixel_values=x).last_hidden_state[:, 0]
        torch.testing.assert_close(timm_model(x), expected, rtol=1e-4, atol=1e-4)


def test_ctranspath_original_swin_layout_is_renamed():
    model = _meta("ctranspath")
    expected = model.state_dict()
    old = {}
    for key, value in expected.items():  # the original layout: merging at the end of the previous stage
        if ".downsample." in key:
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.downsample", f"layers.{stage - 1}.downsample")
        old[key] = value
    old["layers.0.blocks.1.attn_mask"] = torch.empty(64, 49, 49, device="meta")
    old["layers.0.blocks.0.attn.relative_position_index"] = torch.empty(49, 49, device="meta")
    old["head.weight"] = torch.empty(1000, 768, device="meta")
    fitted = fit_state_dict(get_encoder_spec("ctranspath"), old, expected, "ctranspath.pth")
    assert set(fitted) == set(expected)


def test_conch_v15_224_position_table_is_resampled_to_448():
    expected = {"trunk.pos_embed": torch.empty(1, 785, 1024)}
    state = zoo.adapt_conch_v15({"trunk.pos_embed": torch.randn(1, 197, 1024)}, expected)
    assert tuple(state["trunk.pos_embed"].shape) == (1, 785, 1024)


def test_readme_table_lists_every_encoder_with_its_width():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Encoders", 1)[1]
    rows = {line.split("|")[1].strip().strip("`"): line.split("|") for line in section.splitlines()
            if line.startswith("| `")}
    for name in list_encoders():
        assert name in rows, f"README's encoder table lacks {name}"
        assert int(rows[name][3]) == get_encoder_spec(name).embed_dim
