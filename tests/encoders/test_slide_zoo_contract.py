"""Contract of every slide encoder of the slide-features stage: built on the meta device (no memory, no weights),
its parameter count against the published one (within 1%) or, where the authors published none, against the
count derived here by hand from the reference code's layer sizes; real forward passes on real tensors (the
published configurations where cheap, small ones of the same classes otherwise); strict loading round trips."""

from __future__ import annotations

import math

import pytest
import torch

from pathmm_pipeline.encoders import get_encoder_spec, list_encoders
from pathmm_pipeline.encoders import slide_zoo as z
from pathmm_pipeline.encoders.weights import WeightsError


def lin(a: int, b: int, bias: bool = True) -> int:
    return a * b + (b if bias else 0)


def gated(dim: int, hidden: int) -> int:
    return 2 * lin(dim, hidden) + lin(hidden, 1)


LN768 = 2 * 768
TITAN_BLOCK = LN768 + lin(768, 3 * 768) + lin(768, 768) + LN768 + lin(768, 3072) + lin(3072, 768)
TITAN_POOL = (lambda q: q * 768 + 3 * 768 * 768 + 3 * 768 + lin(768, 768) + 2 * LN768)
PRISM_FF = 2 * 1280 + lin(1280, 2560) + lin(1280, 1280)
PRISM_XATTN = 2 * 1280 + 1280 * 1280 + 2560 * 2560 + 1280 * 1280 + PRISM_FF
PRISM_TF = 2 * 1280 + 4 * 1280 * 1280 + PRISM_FF
MADELEINE_PRE = lin(512, 512) + 1024 + lin(512, 512) + 1024 + lin(512, 2048) + 4096

# name: (slide embedding width, parameter count, tolerance, source of the count, published by the authors)
EXPECTED = {
    "mean": (None, 0, 0.0, "parameter-free", True),
    "titan": (768, lin(768, 768) + 768 + 6 * TITAN_BLOCK + LN768 + TITAN_POOL(128) + TITAN_POOL(1) + 768 * 768, 0.0,
              "TITAN vision_config: 6 blocks, 768-d, MLP 3072, poolers of 128 and 1 queries, proj", False),
    "prism": (1280, 513 * 1280 + 2 * PRISM_XATTN + 6 * PRISM_TF + 2 * 2560, 0.0,
              "PRISM perceiver_config: 2 own cross-attention layers, 6 shared latent blocks, 513 latents", False),
    "chief": (768, lin(768, 512) + gated(512, 256) + lin(512, 2) + 2 * lin(512, 2) + lin(512, 256) + lin(256, 1)
              + lin(768, 512), 0.0, "CHIEF size 'small' with its classifier, instance, att_head and text heads",
              False),
    "feather": (512, lin(768, 512) + gated(512, 384), 0.0, "MIL-Lab abmil base on 768-d CONCH v1.5", False),
    "feather_uni_v2": (512, lin(1536, 512) + gated(512, 384), 0.0, "MIL-Lab abmil base on 1536-d UNI2-h", False),
    "madeleine": (512, MADELEINE_PRE + 4 * gated(512, 512) + lin(2048, 128) + lin(2048, 512), 0.0,
                  "MADELEINE: pre_attn, 4 gated heads, token_projector, projector", False),
    "gigapath_slide": (768, 86e6, 0.01, "Prov-GigaPath slide encoder: 86M", True),
    "tiny_slide": (64, None, 0.0, "test stand-in", False),
}
CHEAP = ("mean", "chief", "feather", "feather_uni_v2", "madeleine", "titan", "tiny_slide")


def test_every_slide_encoder_has_its_numbers():
    assert set(z.list_slide_zoo()) == set(EXPECTED), "add the new slide encoder's numbers to EXPECTED"
    assert {"mean", "titan", "prism", "chief", "feather", "madeleine", "gigapath_slide"} <= set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_slide_encoder_contract_on_meta_device(name):
    spec = z.get_slide_zoo_spec(name)
    dim, count, tol, _source, published = EXPECTED[name]
    assert spec.embed_dim == dim and spec.architecture
    assert spec.params_published == published
    if spec.patch_encoder is not None:  # the patch encoder is registered and gives the width the spec expects
        assert spec.patch_encoder in list_encoders() and get_encoder_spec(spec.patch_encoder).embed_dim == spec.d_in
        assert spec.published_weights
    with torch.device("meta"):
        model = spec.builder(spec.d_in or 384)
    n = z.count_parameters(model)
    if count is not None:
        assert spec.n_params == n
        assert abs(n - count) <= tol * count, f"{name}: {n:,} parameters, expected {count:,.0f}"


@pytest.mark.parametrize("name", CHEAP)
def test_real_forward_of_the_published_configuration(name, torch_one_thread):
    spec = z.get_slide_zoo_spec(name)
    d_in = spec.d_in or 96
    model, loaded = z.load_slide_embedder(name, d_in)
    assert loaded["weights"] in ("random init", "none (no parameters)") and loaded["weights_sha256"] is None
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    x = torch.randn(40, d_in)
    coords = torch.stack(torch.meshgrid(torch.arange(5), torch.arange(8), indexing="ij"), -1).reshape(-1, 2) * 1024
    with torch.no_grad():
        out = model(x, coords, 1024)
    assert out.shape == (spec.output_dim(d_in),) and torch.isfinite(out).all()
    if name == "mean":
        torch.testing.assert_close(out, x.mean(0))
    if name != "tiny_slide":  # a set (or grid) of patches: the order they are listed in does not matter
        perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            torch.testing.assert_close(model(x[perm], coords[perm], 1024), out, rtol=1e-4, atol=1e-5)
    again, _ = z.load_slide_embedder(name, d_in)  # seeded: the same random init every time
    with torch.no_grad():
        torch.testing.assert_close(again(x, coords, 1024), out)


def test_small_prism_and_gigapath_forward(torch_one_thread):
    torch.manual_seed(0)
    prism = z.PrismSlideEncoder(d_in=48, dim=32, latents=6, depth=4, transformer_depth=2, heads=4).eval()
    layers = prism.perceiver.layers
    assert layers[3]["xattn"] is layers[1]["xattn"] and layers[2]["tf"] is layers[0]["tf"]  # shared as published
    assert layers[1]["xattn"] is not layers[0]["xattn"]
    x = torch.randn(30, 48)
    with torch.no_grad():
        out = prism(x)
        torch.testing.assert_close(prism(x[torch.randperm(30)]), out, rtol=1e-4, atol=1e-5)
    assert out.shape == (32,)
    giga, _ = z.load_slide_embedder("gigapath_slide", 1536)
    coords = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij"), -1).reshape(-1, 2) * 1024
    with torch.no_grad():
        emb = giga(torch.randn(12, 1536), coords, 1024)
    assert emb.shape == (768,) and torch.isfinite(emb).all()


def test_alibi_slopes_of_titan():
    assert z.alibi_slopes(8) == [2.0 ** -i for i in range(1, 9)]
    twelve = z.alibi_slopes(12)
    assert twelve[:8] == [2.0 ** -i for i in range(1, 9)]
    assert twelve[8:] == pytest.approx([2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5])


def _titan_dense(model: z.TitanSlideEncoder, x, coords, patch):
    """TITAN as the paper's code lays it out: a dense H x W grid of summed features, background cells (all zero)
    dropped after the patch embedding, an ALiBi table over the kept cells' (row, col), full attention."""
    cells = ((coords - coords.min(0).values) // patch).long()
    cells = cells - cells.min(0).values
    h, w = (int(v) + 1 for v in cells.max(0).values)
    grid = torch.zeros(h * w, x.shape[1])
    grid.index_add_(0, cells[:, 0] * w + cells[:, 1], x)
    keep = (grid != 0).any(1)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    points = torch.stack([rows.reshape(-1), cols.reshape(-1)], 1)[keep].float()
    dist = ((points[:, None] - points[None]) ** 2).sum(-1).sqrt()
    heads = model.heads
    bias = torch.zeros(heads, len(points) + 1, len(points) + 1)
    for i, slope in enumerate(z.alibi_slopes(heads)):
        bias[i, 1:, 1:] = -slope * dist
    t = torch.cat([model.cls_token[0], model.patch_embed(grid)[keep]]).unsqueeze(0)
    for block in model.blocks.modules_list:
        a = block.norm1(t)
        q, k, v = block.attn.qkv(a).view(1, -1, 3, heads, a.shape[-1] // heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias, -1) @ v
        t = t + block.attn.proj(att.transpose(1, 2).reshape(1, -1, a.shape[-1]))
        t = t + block.mlp(block.norm2(t))
    t = model.norm(t)
    pool = model.attn_pool_contrastive
    out, _ = pool.attn(pool.ln_q(pool.query).unsqueeze(1), pool.ln_k(t).transpose(0, 1), pool.ln_k(t).transpose(0, 1))
    return out[0, 0]


def test_titan_grid_and_alibi_match_the_dense_layout(torch_one_thread):
    torch.manual_seed(0)
    model = z.TitanSlideEncoder(d_in=16, embed_dim=24, depth=2, heads=12, pooler_heads=4, pooler_queries=3).eval()
    cells = torch.tensor([[0, 0], [0, 3], [2, 1], [2, 2], [4, 0], [1, 1], [3, 3]])
    coords = cells * 512 + 1000                                               # an offset slide, level-0 pixels
    x = torch.randn(len(cells), 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x, coords, 512), _titan_dense(model, x, coords, 512), rtol=1e-4, atol=1e-5)
        # two tiles in one cell add up, as TITAN's grid does
        dup = torch.cat([coords, coords[:1] + 100])
        xd = torch.cat([x, x[:1]])
        x2 = x.clone()
        x2[0] *= 2
        torch.testing.assert_close(model(xd, dup, 512), model(x2, coords, 512), rtol=1e-4, atol=1e-5)


def test_madeleine_heads_take_interleaved_features():
    torch.manual_seed(0)
    emb = z.MadeleineEmbedder(d_in=8, hidden=6, heads=3, attn_hidden=6).eval()
    x = torch.randn(10, 8)
    with torch.no_grad():
        out = emb(x)
        h = emb.pre_attn(x)                                                   # (10, 18): feature e * 3 + c
        for c in range(3):
            part = h[:, c::3]
            weights = torch.softmax(emb.attn[c](part)[:, 0], 0)
            torch.testing.assert_close(out[:, c], weights @ part)


def test_features_of_the_wrong_patch_encoder_are_refused_in_one_line():
    with pytest.raises(z.PatchFeatureMismatch) as info:
        z.load_slide_embedder("titan", 1536)
    assert "conch_v15" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(z.PatchFeatureMismatch, match="trained on ctranspath features, these come from phikon"):
        z.check_patch_features(z.get_slide_zoo_spec("chief"), 768, "phikon", where="a.zarr")
    z.check_patch_features(z.get_slide_zoo_spec("mean"), 123, "anything")    # mean takes any features


def test_strict_loading_round_trip_and_refusals(tmp_path, torch_one_thread):
    model, _ = z.load_slide_embedder("feather", 768)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)                                                       # not the seeded init
    # the hub's layout: MIL-Lab's wrapper prefix and the 108-way pretraining classifier
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["model.classifier.weight"] = torch.zeros(108, 512)
    path = tmp_path / "feather.pth"
    torch.save(state, path)
    loaded, info = z.load_slide_embedder("feather", 768, path)
    assert info["weights"] == str(path) and len(info["weights_sha256"]) == 64
    x = torch.randn(20, 768)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    bad = dict(state)
    bad["model.global_attn.attention_q.weight"] = bad.pop("model.global_attn.attention_a.0.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as err:
        z.load_slide_embedder("feather", 768, tmp_path / "bad.pth")
    assert "bad.pth" in str(err.value) and "global_attn.attention_a.0.weight" in str(err.value)
    shaped = dict(state)
    shaped["model.patch_embed.0.weight"] = torch.zeros(512, 1024)
    torch.save(shaped, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match="shape mismatch"):
        z.load_slide_embedder("feather", 768, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match="not downloaded"):
        z.load_slide_embedder("titan", 768, "hf_hub:MahmoodLab/TITAN")
    with pytest.raises(WeightsError, match="no parameters"):
        z.load_slide_embedder("mean", 768, path)


def test_titan_checkpoint_keeps_the_vision_tower_only(tmp_path, torch_one_thread):
    small = z.SlideZooSpec("titan_small", "TITAN 2 x 24-d", None, None, 24, 0, "test", False,
                           lambda d: z.TitanSlideEncoder(d, 24, 2, 4, pooler_heads=4, pooler_queries=3),
                           adapt=z.get_slide_zoo_spec("titan").adapt, needs_coords=True)
    z.register_slide_zoo(small)
    try:
        model, _ = z.load_slide_embedder("titan_small", 16)
        state = {f"vision_encoder.{k}": v + 0.01 for k, v in model.state_dict().items()}
        state["text_encoder.token_embedding.weight"] = torch.zeros(10, 24)    # TITAN's text tower: left out
        torch.save(state, tmp_path / "titan.pth")
        loaded, _ = z.load_slide_embedder("titan_small", 16, tmp_path / "titan.pth")
        assert all(torch.equal(loaded.state_dict()[k], state[f"vision_encoder.{k}"]) for k in model.state_dict())
    finally:
        z.SLIDE_ZOO.remove("titan_small")


def test_gigapath_checkpoint_of_the_bare_encoder_loads(tmp_path, torch_one_thread):
    from pathmm_pipeline.encoders.slide import TinySlideEncoder

    bare = TinySlideEncoder(40)
    torch.save(bare.state_dict(), tmp_path / "tiny.pt")                       # keys as ModalTune's encoder has them
    loaded, _ = z.load_slide_embedder("tiny_slide", 40, tmp_path / "tiny.pt")
    assert torch.equal(loaded.slide_encoder.patch_embed.weight, bare.patch_embed.weight)


def test_readme_table_lists_every_slide_encoder():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Slide encoders", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip().strip("`"): line.split("|") for line in section.splitlines()
            if line.startswith("| `")}
    for name in z.list_slide_zoo():
        assert name in rows, f"README's slide-encoder table lacks {name}"
        spec = z.get_slide_zoo_spec(name)
        assert rows[name][3].strip() == (str(spec.embed_dim) if spec.embed_dim else "D")
