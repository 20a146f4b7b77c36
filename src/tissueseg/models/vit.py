"""Vision Transformers as DeepLab encoders: token maps of two blocks, projected to CNN-like channels.

UniSemAlign (Le-Van Thai et al., CVPRW 2026) reads a frozen pathology foundation ViT (UNI, a ViT-L/16)
at a shallow and a deep block (paper: blocks 2 and 9), drops the prefix (class / register) tokens,
reshapes the patch tokens to (N, C, H/16, W/16) maps and projects them with 1×1 convolutions to 256
(low level, the DeepLab skip) and 2048 (high level, the ASPP input) channels. Blocks after the deepest
one used are pruned, so they cost neither time nor memory.

Registered backbones (all blocks (2, 9), projections 256 / 2048, stride 16):

``uni_vit_l16``
    The UNI architecture (timm ``vit_large_patch16_224`` with LayerScale ``init_values=1e-5`` and
    dynamic image size). ``pretrained=True`` looks for ``MahmoodLab/UNI`` in the local Hugging Face
    cache; a path loads any local UNI checkpoint. Nothing is downloaded.
``vit_tiny_tokens``, ``vit_small_tokens``, ``vit_base_tokens``, ``vit_large_tokens``
    timm ViT-Ti/S/B/L 16; ``pretrained=True`` takes timm's weights from the local Hugging Face cache,
    a path loads any ViT checkpoint with timm key names (e.g. a pathology ViT-B/16).

:func:`register_vit_backbone` adds more names (call it at import time of your code so that
``tissueseg predict`` can rebuild an exported model).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from tissueseg.models.registry import Backbone, Pretrained, register_backbone
from tissueseg.models.weights import (PASS_A_PATH, WeightsNotFoundError, find_in_hf_cache, load_state_dict_file,
                                      resolve_local_weights)

DEFAULT_BLOCKS = (2, 9)
LOW_CHANNELS = 256
HIGH_CHANNELS = 2048
UNI_HUB_ID = "MahmoodLab/UNI"
UNI_TIMM_KWARGS = {"init_values": 1e-5, "dynamic_img_size": True}


def _strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``module.`` / ``model.`` / ``backbone.`` prefixes that training wrappers add."""
    for prefix in ("module.", "model.", "backbone."):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def _weights_file(arch: str, pretrained: Pretrained, hub_id: str | None) -> Path | None:
    if not pretrained:
        return None
    if pretrained is not True:
        return resolve_local_weights(pretrained)
    if hub_id is None:
        cfg = timm.models.get_pretrained_cfg(arch)
        hub_id = cfg.hf_hub_id if cfg else None
        names = [cfg.hf_hub_filename] if cfg and cfg.hf_hub_filename else None
    else:
        names = ["pytorch_model.bin", "model.safetensors"]
    found = find_in_hf_cache(hub_id, names) if hub_id else None
    if found is None:
        raise WeightsNotFoundError(f"pretrained=True for ViT '{arch}': '{hub_id}' is not in the local Hugging Face "
                                   f"cache, and tissueseg never downloads; {PASS_A_PATH}")
    return found


def load_vit_weights(model: nn.Module, file) -> None:
    """Load a ViT checkpoint (timm key names) into a (possibly pruned) timm ViT.

    Keys of parts the model does not have (the classifier head, the final norm, blocks pruned away)
    are ignored; anything else that does not fit is an error naming the file.
    """
    state = _strip_prefixes(load_state_dict_file(file))
    own = model.state_dict()
    n_blocks = len(model.blocks)

    def dropped(key: str) -> bool:
        parts = key.split(".")
        pruned_block = parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit() and int(parts[1]) >= n_blocks
        return key not in own and (pruned_block or parts[0] in ("head", "head_drop", "norm", "fc_norm"))

    state = {k: v for k, v in state.items() if not dropped(k)}
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(model.patch_embed.grid_size),
                                                    num_prefix_tokens=prefix)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{file}: not a checkpoint of this ViT architecture (missing keys {missing[:4]}, "
                         f"unexpected keys {unexpected[:4]}, wrong shapes {wrong[:4]}; fix: pick the backbone "
                         f"that matches the weights)")
    model.load_state_dict(state)


class ViTTokenBackbone(Backbone):
    """A timm ViT read at two (or more) blocks, each token map projected by a 1×1 conv.

    Parameters
    ----------
    arch : timm ViT name (``vit_large_patch16_224``, ...).
    pretrained : False / None (random init), True (timm's weights or ``hub_id`` from the local HF cache)
        or a local weights source.
    blocks : 0-based block indices, shallow → deep (paper: 2 and 9).
    channels : output channels of each map after projection (paper: 256 and 2048).
    hub_id : Hugging Face repo whose cached weights ``pretrained=True`` uses instead of timm's default.
    frozen : run the ViT without gradients and in eval mode (paper); the projections always train.
    normalization : input mean/std on [0, 1] RGB; default: the timm config of ``arch``.
    timm_kwargs : extra arguments of ``timm.create_model`` (e.g. a tiny ``depth``/``embed_dim`` for tests).
    """

    def __init__(self, arch: str, pretrained: Pretrained = None, blocks: Sequence[int] = DEFAULT_BLOCKS,
                 channels: Sequence[int] = (LOW_CHANNELS, HIGH_CHANNELS), hub_id: str | None = None,
                 frozen: bool = False, normalization: dict | None = None, **timm_kwargs):
        super().__init__()
        blocks = [int(b) for b in blocks]
        if len(blocks) != len(channels) or sorted(blocks) != blocks or len(set(blocks)) != len(blocks):
            raise ValueError(f"ViT blocks {blocks} must be increasing and match the {len(channels)} projections")
        kwargs = {"num_classes": 0, "dynamic_img_size": True, **timm_kwargs}
        vit = timm.create_model(arch, pretrained=False, **kwargs)
        if blocks[-1] >= len(vit.blocks):
            raise ValueError(f"ViT '{arch}' has {len(vit.blocks)} blocks; block {blocks[-1]} does not exist "
                             f"(fix: use blocks between 0 and {len(vit.blocks) - 1})")
        vit.prune_intermediate_layers(blocks, prune_norm=True, prune_head=True)
        file = _weights_file(arch, pretrained, hub_id)
        if file is not None:
            load_vit_weights(vit, file)
        self.vit = vit
        self.blocks = blocks
        width = vit.embed_dim
        self.projections = nn.ModuleList(nn.Conv2d(width, c, 1) for c in channels)
        for proj in self.projections:
            nn.init.kaiming_normal_(proj.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(proj.bias)
        patch = vit.patch_embed.patch_size
        stride = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
        self.feature_channels = list(channels)
        self.reductions = [stride] * len(channels)
        cfg = getattr(vit, "pretrained_cfg", None) or {}
        self.normalization = dict(normalization) if normalization else {
            "mean": tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)), "std": tuple(cfg.get("std", IMAGENET_DEFAULT_STD))}
        self.frozen = False
        self.set_frozen(frozen)

    def set_frozen(self, frozen: bool = True) -> None:
        """Freeze (paper) or fine-tune the transformer; the projections stay trainable."""
        self.frozen = bool(frozen)
        for p in self.vit.parameters():
            p.requires_grad = not self.frozen
        if self.frozen:
            self.vit.eval()

    def train(self, mode: bool = True) -> "ViTTokenBackbone":
        super().train(mode)
        if self.frozen:
            self.vit.eval()
        return self

    def token_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Patch-token maps (N, width, H/16, W/16) of the chosen blocks, prefix tokens removed."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.vit.forward_intermediates(x, indices=self.blocks, output_fmt="NCHW",
                                                  intermediates_only=True, stop_early=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [proj(t) for proj, t in zip(self.projections, self.token_maps(x))]


def register_vit_backbone(name: str, arch: str, blocks: Sequence[int] = DEFAULT_BLOCKS,
                          channels: Sequence[int] = (LOW_CHANNELS, HIGH_CHANNELS), hub_id: str | None = None,
                          normalization: dict | None = None, **timm_kwargs) -> None:
    """Register ``name`` as a :class:`ViTTokenBackbone` of ``arch`` in the backbone registry."""

    def factory(pretrained: Pretrained = None, out_indices: Sequence[int] | None = None,
                output_stride: int | None = None, in_chans: int = 3) -> Backbone:
        if in_chans != 3:
            raise ValueError(f"backbone '{name}' takes RGB input only (in_chans=3)")
        return ViTTokenBackbone(arch, pretrained, out_indices or blocks, channels, hub_id,
                                normalization=normalization, **timm_kwargs)

    factory.__name__ = name
    factory.__doc__ = f"{arch} token maps of blocks {tuple(blocks)} projected to {tuple(channels)} channels."
    register_backbone(factory)


register_vit_backbone("uni_vit_l16", "vit_large_patch16_224", hub_id=UNI_HUB_ID,
                      normalization={"mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD}, **UNI_TIMM_KWARGS)
register_vit_backbone("vit_tiny_tokens", "vit_tiny_patch16_224")
register_vit_backbone("vit_small_tokens", "vit_small_patch16_224")
register_vit_backbone("vit_base_tokens", "vit_base_patch16_224")
register_vit_backbone("vit_large_tokens", "vit_large_patch16_224")
