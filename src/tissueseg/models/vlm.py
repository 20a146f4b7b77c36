"""Frozen pathology vision–language (CLIP-style) models behind one interface, from local weights only.

PLIMSeg uses such a model as its language–image *matcher*: image crops (masked by CAMs) and text
prompts are embedded in one space and compared. The model is frozen (no ``requires_grad``, always in
eval mode), but :meth:`VisionLanguageModel.encode_image` is differentiable with respect to its input
image, so the matching losses reach the CAMs through it.

Backends (:func:`load_vlm` picks one by ``kind``):

``quiltnet`` / ``open_clip`` (:func:`load_open_clip`)
    Any open_clip model, e.g. QuiltNet-B-32 (``wisdomik/QuiltNet-B-32``, a ViT-B-32): a folder
    laid out like a hub repo (``open_clip_config.json`` + weights, loaded through open_clip's
    ``local-dir:`` schema), a Hugging Face cache folder, or one checkpoint file plus its open_clip
    architecture name.
``plip`` (:func:`load_plip`)
    PLIP (``vinid/plip``), a transformers ``CLIPModel`` folder (or a Hugging Face cache of it).
``conch`` (:func:`load_conch`)
    CONCH (``MahmoodLab/CONCH``) when the user installed its ``conch`` package; its licence forbids
    bundling it. The checkpoint is loaded with a strict key check (:func:`load_state_dict_strict`).

Nothing here downloads anything: every loader reads local files, and a missing file raises an error
that says what to download on a connected machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tissueseg.models.weights import WeightsNotFoundError, load_state_dict_file

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VLM_KINDS = ("open_clip", "quiltnet", "plip", "conch")
QUILTNET_REPO = "wisdomik/QuiltNet-B-32"
QUILTNET_ARCH = "ViT-B-32"
PLIP_REPO = "vinid/plip"
CONCH_REPO = "MahmoodLab/CONCH"
CONCH_ARCH = "conch_ViT-B-16"
OPEN_CLIP_CONFIG = "open_clip_config.json"
# Weights open_clip's ``local-dir:`` schema picks up, best first (it also takes any other .safetensors/.bin/.pth).
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
OPEN_CLIP_SUFFIXES = (".safetensors", ".bin", ".pth")
OPEN_CLIP_EXPECTED = "open_clip_model.safetensors or open_clip_pytorch_model.bin"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_WHERE = "on a connected machine and pass the folder (or your Hugging Face cache) as plimseg.matcher.weights"
DOWNLOAD_HINTS = {
    "quiltnet": f"download the files of https://huggingface.co/{QUILTNET_REPO} ({OPEN_CLIP_CONFIG}, "
                f"open_clip_pytorch_model.bin) {_WHERE}",
    "open_clip": f"download an open_clip model ({OPEN_CLIP_CONFIG} + open_clip_pytorch_model.bin or "
                 f"open_clip_model.safetensors, e.g. from https://huggingface.co/{QUILTNET_REPO}) {_WHERE}, "
                 "or pass one checkpoint file with its architecture as plimseg.matcher.model_name",
    "plip": f"download the files of https://huggingface.co/{PLIP_REPO} (config.json, pytorch_model.bin or "
            f"model.safetensors, preprocessor_config.json and the tokenizer files) {_WHERE}",
    "conch": f"request access to https://huggingface.co/{CONCH_REPO}, download its pytorch_model.bin on a connected "
             "machine and pass the file as plimseg.matcher.weights; CONCH also needs its package: "
             "pip install git+https://github.com/mahmoodlab/CONCH.git",
}


def _offline() -> None:
    """Keep Hugging Face libraries imported from here on off the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


class VisionLanguageModel(nn.Module):
    """Frozen CLIP-style matcher. Subclasses implement ``_image_features`` and ``_text_features``.

    Parameters
    ----------
    model
        The wrapped model; its parameters are frozen here.
    name
        Human-readable description (backend, architecture, source), printed by reports.
    image_size
        Side of the square input the image tower expects.
    mean, std
        Per-channel normalisation of the image tower.
    """

    def __init__(self, model: nn.Module, name: str, image_size: int,
                 mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD):
        super().__init__()
        self.model = model
        self.name = name
        self.image_size = int(image_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"{name}: expected 3-channel mean/std, got {self.mean} / {self.std}")
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.train(False)

    @property
    def device(self) -> torch.device:
        """Device of the model's weights."""
        return self._mean.device

    def train(self, mode: bool = True) -> VisionLanguageModel:
        """Stay in eval mode whatever ``mode`` is (frozen matcher, no dropout)."""
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize RGB images in [0, 1], ``(N, 3, H, W)``, to ``image_size`` (bilinear) and normalise them.

        Differentiable: gradients flow back to ``images``.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images (N, 3, H, W), got shape {tuple(images.shape)}")
        size = (self.image_size, self.image_size)
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=False)
        return (images - self._mean.to(images.dtype)) / self._std.to(images.dtype)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``(N, D)`` (float32) of RGB images in [0, 1]; differentiable."""
        return F.normalize(self._image_features(self.preprocess(images)).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``(P, D)`` (float32) of ``prompts``, on the model's device."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return F.normalize(self._text_features(prompts).float(), dim=-1)

    def similarity(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every image with every text, ``(N, P)`` (what CLIMS's losses take)."""
        return image_embeddings @ text_embeddings.t()

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embeddings of preprocessed images (any scale)."""
        raise NotImplementedError

    def _text_features(self, prompts: list[str]) -> torch.Tensor:
        """Embeddings of the prompts (any scale)."""
        raise NotImplementedError


def _square(size: int | Sequence[int], name: str) -> int:
    if isinstance(size, int):
        return size
    if len(size) != 2 or size[0] != size[1]:
        raise ValueError(f"{name}: non-square image size {tuple(size)} is not supported")
    return int(size[0])


class OpenClipVLM(VisionLanguageModel):
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` model; input size and mean/std from its preprocess config.

    Parameters
    ----------
    model
        The open_clip model.
    tokenizer
        ``list[str] -> (P, L)`` token ids, e.g. ``open_clip.get_tokenizer(...)``.
    name
        Human-readable description.
    """

    def __init__(self, model: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], name: str):
        visual = model.visual
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        size = cfg.get("size") or getattr(visual, "image_size", 224)
        mean = cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_CLIP_MEAN
        std = cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_CLIP_STD
        super().__init__(model, name, _square(size, name), mean, std)
        self.tokenizer = tokenizer

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _text_features(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(self.device))


def _pooled(output: torch.Tensor | object) -> torch.Tensor:
    """Projected features of ``CLIPModel.get_*_features``: a tensor (transformers 4) or ``pooler_output`` (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HFClipVLM(VisionLanguageModel):
    """A Hugging Face transformers ``CLIPModel`` (e.g. PLIP); input size from its vision config.

    Parameters
    ----------
    model
        The ``CLIPModel``.
    tokenizer
        ``list[str] -> (P, L)`` token ids padded to a fixed length. No attention mask is passed: the
        text tower is causal and pools at the end-of-text token, so padding after it has no effect.
    name
        Human-readable description.
    mean, std
        Image normalisation (the model's ``preprocessor_config.json``).
    """

    def __init__(self, model: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], name: str,
                 mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD):
        super().__init__(model, name, _square(model.config.vision_config.image_size, name), mean, std)
        self.tokenizer = tokenizer

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def _text_features(self, prompts: list[str]) -> torch.Tensor:
        return _pooled(self.model.get_text_features(input_ids=self.tokenizer(prompts).to(self.device)))


class ConchVLM(VisionLanguageModel):
    """CONCH's CoCa model (``conch`` package): contrastive image embedding, 448-px input, OpenAI mean/std.

    Parameters
    ----------
    model
        The CONCH ``CoCa`` model.
    tokenizer
        ``list[str] -> (P, 128)`` token ids (``conch.open_clip_custom.tokenize``).
    name
        Human-readable description.
    image_size
        Input side of the vision tower.
    """

    def __init__(self, model: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], name: str, image_size: int):
        super().__init__(model, name, image_size)
        self.tokenizer = tokenizer

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, proj_contrast=True, normalize=False)

    def _text_features(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(self.device), normalize=False)


# --- local files -----------------------------------------------------------------------------------

def _existing(weights: str | os.PathLike | None, kind: str) -> Path:
    """``weights`` as an existing path, else :class:`WeightsNotFoundError` saying what to download."""
    if weights is None:
        raise WeightsNotFoundError(f"no weights given for the {kind} matcher (fix: {DOWNLOAD_HINTS[kind]})")
    path = Path(weights).expanduser()
    if not path.exists():
        raise WeightsNotFoundError(f"{path}: no such file or folder (fix: {DOWNLOAD_HINTS[kind]})")
    return path


def _snapshot(repo_dir: Path) -> Path:
    """The snapshot of a cached repo ``models--org--name``: the one ``refs/main`` names, else the newest."""
    ref = repo_dir / "refs" / "main"
    if ref.is_file() and (chosen := repo_dir / "snapshots" / ref.read_text().strip()).is_dir():
        return chosen
    snapshots = [p for p in (repo_dir / "snapshots").glob("*") if p.is_dir()]
    if not snapshots:
        raise WeightsNotFoundError(f"{repo_dir}: a Hugging Face cache folder without snapshots")
    return max(snapshots, key=lambda p: p.stat().st_mtime)


def resolve_hf_snapshot(path: str | os.PathLike, repo_id: str | None = None, marker: str | None = None) -> Path:
    """Resolve a Hugging Face cache folder to a snapshot folder; any other folder is returned as it is.

    Parameters
    ----------
    path
        A cached repo ``models--org--name``, a hub cache (the folder holding ``models--*``; its parent
        ``HF_HOME`` works too) or a plain folder.
    repo_id
        ``org/name`` to pick in a hub cache holding several repos.
    marker
        A file name that only the wanted repo's snapshot holds, to pick among several repos otherwise.

    Returns
    -------
    Path
        The snapshot folder (``snapshots/<rev>``, the revision ``refs/main`` points to, else the newest one).

    Raises
    ------
    WeightsNotFoundError
        If a cached repo has no snapshot, or a hub cache holds several candidate repos.
    """
    path = Path(path).expanduser()
    if (path / "hub").is_dir() and not any(path.glob("models--*")):
        path = path / "hub"
    if (path / "snapshots").is_dir():
        return _snapshot(path)
    repos = sorted(p for p in path.glob("models--*") if p.is_dir())
    if not repos:
        return path
    wanted = path / f"models--{repo_id.replace('/', '--')}" if repo_id else None
    if wanted is not None and wanted.is_dir():
        return _snapshot(wanted)
    candidates = [r for r in repos if marker is None or (_snapshot(r) / marker).is_file()]
    if len(candidates) != 1:
        names = ", ".join(r.name for r in candidates or repos)
        raise WeightsNotFoundError(f"{path}: cannot tell which cached repo to use ({names}); "
                                   "pass its models--org--name folder")
    return _snapshot(candidates[0])


def _repo_label(folder: Path) -> str:
    """``org/name`` of a Hugging Face cache snapshot folder, else the folder's name."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.removeprefix("models--").replace("--", "/")
    return folder.name


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model`` only if keys and shapes match exactly.

    Raises
    ------
    ValueError
        Naming ``source`` and listing (the first few) missing, unexpected and mis-shaped keys.
    """
    reference = model.state_dict()
    missing = sorted(reference.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - reference.keys())
    misshaped = sorted(k for k in reference.keys() & state_dict.keys() if reference[k].shape != state_dict[k].shape)
    problems = [f"{len(keys)} {what} keys ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                if keys]
    if problems:
        raise ValueError(f"{source}: the weights do not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


# --- loaders -----------------------------------------------------------------------------------------

def _open_clip_from_file(checkpoint: Path, model_name: str | None) -> OpenClipVLM:
    import open_clip

    if not model_name:
        raise ValueError(f"{checkpoint}: a single checkpoint file needs its open_clip architecture "
                         "(fix: pass model_name, e.g. ViT-B-32 for QuiltNet-B-32)")
    if model_name.replace("/", "-") not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {model_name!r} (fix: one of open_clip.list_models())")
    model = open_clip.create_model(model_name, pretrained=str(checkpoint), device="cpu")
    return OpenClipVLM(model, open_clip.get_tokenizer(model_name), f"open_clip {model_name} ({checkpoint})")


def load_open_clip(weights: str | os.PathLike, model_name: str | None = None) -> OpenClipVLM:
    """An open_clip model from local weights.

    Parameters
    ----------
    weights
        One of: a folder with ``open_clip_config.json`` and weights (``open_clip_model.safetensors`` or
        ``open_clip_pytorch_model.bin``; the layout of a hub repo such as ``wisdomik/QuiltNet-B-32``),
        loaded with open_clip's ``local-dir:`` schema, whose config defines the architecture; a Hugging
        Face cache folder of such a repo (hub cache or ``models--org--name``); a single checkpoint file
        (``.bin``/``.pt``/``.pth``/``.safetensors``), or a folder holding only weights, with ``model_name``.
    model_name
        open_clip architecture (e.g. ``ViT-B-32``) of a checkpoint without ``open_clip_config.json``.

    Raises
    ------
    WeightsNotFoundError
        If ``weights`` does not exist or a folder holds no weights.
    ValueError
        If the architecture is unknown or not given for a bare checkpoint.
    """
    _offline()
    import open_clip

    path = _existing(weights, "open_clip")
    if path.is_file():
        return _open_clip_from_file(path, model_name)
    folder = resolve_hf_snapshot(path, marker=OPEN_CLIP_CONFIG)
    found = [f for f in sorted(folder.iterdir()) if f.is_file() and f.suffix in OPEN_CLIP_SUFFIXES]
    if not (folder / OPEN_CLIP_CONFIG).is_file():
        preferred = [folder / n for n in OPEN_CLIP_WEIGHTS + HF_WEIGHTS if (folder / n).is_file()]
        if model_name and (preferred or len(found) == 1):
            return _open_clip_from_file((preferred or found)[0], model_name)
        raise WeightsNotFoundError(
            f"{folder}: expected {OPEN_CLIP_CONFIG} and weights ({OPEN_CLIP_EXPECTED}), "
            f"or one checkpoint file together with model_name; found {[f.name for f in folder.iterdir()]}")
    if not found:  # open_clip would silently keep a random init
        raise WeightsNotFoundError(f"{folder}: {OPEN_CLIP_CONFIG} but no weights file "
                                   f"(expected {OPEN_CLIP_EXPECTED})")
    source = f"local-dir:{folder}"
    model = open_clip.create_model(source, device="cpu", require_pretrained=True)
    return OpenClipVLM(model, open_clip.get_tokenizer(source), f"open_clip {_repo_label(folder)} ({folder})")


def load_plip(folder: str | os.PathLike) -> HFClipVLM:
    """PLIP (``vinid/plip``): a transformers ``CLIPModel`` folder or a Hugging Face cache of it.

    Image mean/std come from ``preprocessor_config.json`` when present (else OpenAI CLIP's), the input
    size from ``config.vision_config.image_size``. The text is tokenised by the folder's
    ``CLIPTokenizerFast`` when its files are there, else by open_clip's OpenAI BPE tokenizer (the
    vocabulary PLIP was fine-tuned with, start 49406 / end 49407), both padded to
    ``text_config.max_position_embeddings`` tokens.

    Raises
    ------
    WeightsNotFoundError
        If the folder does not exist or lacks ``config.json`` or the weights.
    """
    _offline()
    path = _existing(folder, "plip")
    folder = resolve_hf_snapshot(path, repo_id=PLIP_REPO, marker="config.json") if path.is_dir() else path
    if not (folder / "config.json").is_file() or not any((folder / n).is_file() for n in HF_WEIGHTS):
        raise WeightsNotFoundError(f"{folder}: expected a transformers CLIPModel folder (config.json and "
                                   f"{' or '.join(HF_WEIGHTS)}) (fix: {DOWNLOAD_HINTS['plip']})")
    try:
        from transformers import CLIPModel, CLIPTokenizerFast
    except ImportError as exc:
        raise ImportError("PLIP needs the transformers package (pip install transformers)") from exc

    model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
    context_length = model.config.text_config.max_position_embeddings
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    if (folder / "preprocessor_config.json").is_file():
        cfg = json.loads((folder / "preprocessor_config.json").read_text())
        mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
    if (folder / "tokenizer.json").is_file() or all((folder / n).is_file() for n in ("vocab.json", "merges.txt")):
        hf_tokenizer = CLIPTokenizerFast.from_pretrained(str(folder), local_files_only=True)

        def tokenizer(texts: list[str]) -> torch.Tensor:
            return hf_tokenizer(texts, padding="max_length", max_length=context_length, truncation=True,
                                return_tensors="pt")["input_ids"]
        which = "its CLIP tokenizer"
    else:
        import open_clip

        tokenizer = open_clip.get_tokenizer(QUILTNET_ARCH, context_length=context_length)
        which = "open_clip's OpenAI BPE tokenizer"
    return HFClipVLM(model, tokenizer, f"PLIP {_repo_label(folder)} (transformers CLIPModel, {which}; {folder})",
                     mean, std)


def load_conch(checkpoint: str | os.PathLike) -> ConchVLM:
    """CONCH from its ``pytorch_model.bin`` (a file, its folder or a Hugging Face cache), with a strict key check.

    Needs the ``conch`` package (https://github.com/mahmoodlab/CONCH; not bundled because of its licence).
    The architecture is built without weights and the checkpoint loaded by :func:`load_state_dict_strict`,
    since CONCH's own loader ignores mismatching keys.

    Raises
    ------
    WeightsNotFoundError
        If the checkpoint is not found.
    ImportError
        If the ``conch`` package is not installed.
    ValueError
        If the checkpoint's keys or shapes do not fit the architecture.
    """
    _offline()
    path = _existing(checkpoint, "conch")
    if path.is_dir():
        path = resolve_hf_snapshot(path, repo_id=CONCH_REPO, marker="pytorch_model.bin") / "pytorch_model.bin"
        if not path.is_file():
            raise WeightsNotFoundError(f"{path.parent}: expected CONCH's pytorch_model.bin "
                                       f"(fix: {DOWNLOAD_HINTS['conch']})")
    try:
        from conch.open_clip_custom import CoCa, get_tokenizer, tokenize
        from conch.open_clip_custom.factory import CFG_DIR
    except ImportError as exc:
        raise ImportError("the conch matcher needs the CONCH package, which tissueseg cannot bundle (licence): "
                          "install it from https://github.com/mahmoodlab/CONCH (pip install "
                          "git+https://github.com/mahmoodlab/CONCH.git) and download pytorch_model.bin from the "
                          f"gated https://huggingface.co/{CONCH_REPO}") from exc

    cfg = json.loads((Path(CFG_DIR) / f"{CONCH_ARCH}.json").read_text())
    cfg.pop("custom_text", None)
    model = CoCa(**cfg)
    state_dict = load_state_dict_file(path)
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    load_state_dict_strict(model, state_dict, str(path))
    hf_tokenizer = get_tokenizer()
    return ConchVLM(model, lambda texts: tokenize(tokenizer=hf_tokenizer, texts=texts),
                    f"CONCH {CONCH_ARCH} ({path})", _square(cfg["vision_cfg"]["image_size"], CONCH_ARCH))


def load_vlm(kind: str, weights: str | os.PathLike | None, model_name: str | None = None) -> VisionLanguageModel:
    """The frozen matcher of ``kind`` (``open_clip``, ``quiltnet``, ``plip``, ``conch``) from local ``weights``.

    ``quiltnet`` is open_clip with ``model_name`` defaulting to ``ViT-B-32`` (QuiltNet-B-32's
    architecture, used for a bare checkpoint file). ``model_name`` is ignored by ``plip`` and ``conch``.

    Raises
    ------
    ValueError
        If ``kind`` is unknown.
    WeightsNotFoundError
        (a ``FileNotFoundError``) if ``weights`` is None or missing; the message says what to download.
    """
    if kind not in VLM_KINDS:
        raise ValueError(f"unknown vision-language model kind {kind!r} (fix: one of {', '.join(VLM_KINDS)})")
    path = _existing(weights, kind)
    if kind == "plip":
        return load_plip(path)
    if kind == "conch":
        return load_conch(path)
    return load_open_clip(path, model_name or (QUILTNET_ARCH if kind == "quiltnet" else None))
