"""Frozen vision–language matchers, checked on randomly initialised models of the real architectures."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tissueseg.models import vlm as vlm_module
from tissueseg.models.vlm import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    VLM_KINDS,
    WeightsNotFoundError,
    load_conch,
    load_open_clip,
    load_plip,
    load_state_dict_strict,
    load_vlm,
    resolve_hf_snapshot,
)

open_clip = pytest.importorskip("open_clip")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUILT_MEAN = (0.5, 0.45, 0.4)  # not the defaults, so reading preprocess_cfg is checked
QUILT_STD = (0.2, 0.25, 0.3)
PLIP_MEAN = (0.6, 0.5, 0.4)
PLIP_STD = (0.3, 0.2, 0.1)
PROMPTS = ["tumor epithelium", "stroma", "tumor epithelium"]


def reference_preprocess(images: torch.Tensor, mean, std, size: int = 224) -> torch.Tensor:
    resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return (resized - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def assert_unit_rows(embeddings: torch.Tensor, shape: tuple[int, int]) -> None:
    assert embeddings.shape == shape and embeddings.dtype == torch.float32
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(shape[0]), atol=1e-5)


@pytest.fixture(scope="module")
def quilt(tmp_path_factory):
    """A random ViT-B-32 (QuiltNet-B-32's architecture) and a hub-repo style folder holding it."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    folder = tmp_path_factory.mktemp("downloads") / "QuiltNet-B-32"
    folder.mkdir()
    config = {"model_cfg": open_clip.get_model_config("ViT-B-32"),
              "preprocess_cfg": {"mean": list(QUILT_MEAN), "std": list(QUILT_STD)}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return model, folder


@pytest.fixture(scope="module")
def quilt_vlm(quilt):
    return load_vlm("quiltnet", quilt[1])


@pytest.mark.slow
def test_quiltnet_folder_embeds_like_the_original_model(quilt, quilt_vlm):
    model, folder = quilt
    assert "QuiltNet-B-32" in quilt_vlm.name and str(folder) in quilt_vlm.name
    assert quilt_vlm.image_size == 224
    assert quilt_vlm.mean == pytest.approx(QUILT_MEAN) and quilt_vlm.std == pytest.approx(QUILT_STD)
    images = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    assert quilt_vlm.preprocess(images).shape == (2, 3, 224, 224)

    embedded = quilt_vlm.encode_image(images)
    assert_unit_rows(embedded, (2, 512))
    with torch.no_grad():
        expected = model.encode_image(reference_preprocess(images, QUILT_MEAN, QUILT_STD), normalize=True)
        expected_text = model.encode_text(open_clip.tokenize(PROMPTS), normalize=True)
    assert torch.allclose(embedded, expected, atol=1e-5)
    assert not torch.allclose(embedded[0], embedded[1], atol=1e-3)

    text = quilt_vlm.encode_text(PROMPTS)
    assert_unit_rows(text, (3, 512))
    assert torch.allclose(text, expected_text, atol=1e-5)
    assert torch.equal(text[0], text[2]) and not torch.allclose(text[0], text[1], atol=1e-3)
    assert torch.allclose(quilt_vlm.encode_text("stroma"), text[1:2], atol=1e-6)  # a bare string is one prompt


@pytest.mark.slow
def test_gradients_reach_the_image_but_no_weight(quilt_vlm):
    assert all(not p.requires_grad for p in quilt_vlm.parameters())
    images = torch.rand(2, 3, 48, 48, requires_grad=True)
    text = quilt_vlm.encode_text(PROMPTS[:2])
    assert not text.requires_grad
    (quilt_vlm.encode_image(images) @ text.T).diagonal().sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in quilt_vlm.parameters())


@pytest.mark.slow
def test_train_keeps_the_matcher_in_eval_mode(quilt_vlm):
    assert quilt_vlm.train() is quilt_vlm
    assert not any(m.training for m in quilt_vlm.modules())
    parent = nn.ModuleDict({"matcher": quilt_vlm, "head": nn.Linear(2, 2)}).train()
    assert parent.training and parent["head"].training
    assert not any(m.training for m in quilt_vlm.modules())


def assert_same_weights(model: nn.Module, reference: nn.Module) -> None:
    weights, expected = model.state_dict(), reference.state_dict()
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def make_hf_cache(hub, repo_id: str, files: dict[str, object], revision: str, main: bool = True):
    """Lay out ``files`` (name -> path or text) as a Hugging Face cache snapshot (blobs + symlinks)."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, content in files.items():
        blob = repo / "blobs" / f"{revision[:8]}-{name}"
        if isinstance(content, str):
            blob.write_text(content)
        else:
            blob.symlink_to(content)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    if main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return repo, snapshot


@pytest.mark.slow
def test_hf_cache_layout_resolves_to_the_same_model(quilt, quilt_vlm, tmp_path):
    _, folder = quilt
    hub = tmp_path / "huggingface" / "hub"
    repo, snapshot = make_hf_cache(hub, "wisdomik/QuiltNet-B-32", {
        "open_clip_config.json": folder / "open_clip_config.json",
        "open_clip_pytorch_model.bin": folder / "open_clip_pytorch_model.bin"}, "a" * 40)
    stale = repo / "snapshots" / ("b" * 40)  # newer, but refs/main names the other one
    stale.mkdir()
    os.utime(stale, (snapshot.stat().st_mtime + 100,) * 2)
    make_hf_cache(hub, "vinid/plip", {"config.json": "{}"}, "c" * 40)  # another cached repo, not open_clip

    assert resolve_hf_snapshot(repo) == snapshot
    assert resolve_hf_snapshot(hub.parent, marker="open_clip_config.json") == snapshot  # HF_HOME, picked by marker
    assert resolve_hf_snapshot(hub, repo_id="vinid/plip") == hub / "models--vinid--plip" / "snapshots" / ("c" * 40)
    with pytest.raises(WeightsNotFoundError, match="plip.*QuiltNet-B-32"):
        resolve_hf_snapshot(hub)
    (repo / "refs" / "main").unlink()
    assert resolve_hf_snapshot(repo) == stale  # no refs/main: the newest snapshot
    (repo / "refs" / "main").write_text("a" * 40)

    cached = load_vlm("quiltnet", hub)
    assert "wisdomik/QuiltNet-B-32" in cached.name
    assert cached.mean == quilt_vlm.mean and cached.std == quilt_vlm.std
    assert_same_weights(cached.model, quilt_vlm.model)


@pytest.mark.slow
def test_single_checkpoint_file_needs_a_known_architecture(quilt):
    model, folder = quilt
    checkpoint = folder / "open_clip_pytorch_model.bin"
    with pytest.raises(ValueError, match="model_name"):
        load_open_clip(checkpoint)
    with pytest.raises(ValueError, match="ViT-Nope"):
        load_open_clip(checkpoint, "ViT-Nope")

    vlm = load_open_clip(checkpoint, "ViT-B-32")
    assert vlm.name.startswith("open_clip ViT-B-32") and str(checkpoint) in vlm.name
    assert vlm.mean == pytest.approx(OPENAI_CLIP_MEAN) and vlm.std == pytest.approx(OPENAI_CLIP_STD)  # defaults
    assert_same_weights(vlm.model, model)


def test_folder_of_bare_weights_loads_as_a_checkpoint_file(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(vlm_module, "_open_clip_from_file", lambda *args: calls.append(args) or "loaded")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(b"")
    assert load_vlm("quiltnet", tmp_path) == "loaded"  # quiltnet: ViT-B-32 unless told otherwise
    assert load_vlm("open_clip", tmp_path, "ViT-B-16") == "loaded"
    assert calls == [(tmp_path / "open_clip_pytorch_model.bin", "ViT-B-32"),
                     (tmp_path / "open_clip_pytorch_model.bin", "ViT-B-16")]
    with pytest.raises(WeightsNotFoundError, match="model_name"):
        load_vlm("open_clip", tmp_path)  # a bare checkpoint needs its architecture


def test_folders_without_weights_are_named(tmp_path):
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    config = {"model_cfg": open_clip.get_model_config("ViT-B-32")}
    (config_only / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsNotFoundError, match="config_only.*no weights.*open_clip_pytorch_model.bin"):
        load_vlm("open_clip", config_only)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError, match="empty.*open_clip_config.json"):
        load_vlm("quiltnet", empty)
    with pytest.raises(WeightsNotFoundError, match="empty.*config.json.*model.safetensors"):
        load_vlm("plip", empty)


HINTS = {"quiltnet": "huggingface.co/wisdomik/QuiltNet-B-32", "open_clip": "open_clip_config.json",
         "plip": "huggingface.co/vinid/plip", "conch": "huggingface.co/MahmoodLab/CONCH"}


@pytest.mark.parametrize("kind", VLM_KINDS)
def test_missing_weights_say_what_to_download(kind, tmp_path):
    for weights in (None, tmp_path / "nowhere"):
        with pytest.raises(FileNotFoundError) as info:
            load_vlm(kind, weights)
        assert HINTS[kind] in str(info.value) and "plimseg.matcher.weights" in str(info.value)
        assert weights is None or "nowhere" in str(info.value)


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(ValueError, match="clip_xl.*open_clip, quiltnet, plip, conch"):
        load_vlm("clip_xl", "weights.bin")


# --- PLIP ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plip(tmp_path_factory):
    """A random transformers CLIPModel with PLIP's configuration (ViT-B/32), saved without tokenizer files."""
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(
        text_config={"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                     "num_hidden_layers": 12, "vocab_size": 49408, "max_position_embeddings": 77,
                     "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                       "num_hidden_layers": 12, "patch_size": 32, "image_size": 224},
        projection_dim=512)
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    folder = tmp_path_factory.mktemp("downloads") / "plip"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": PLIP_MEAN, "image_std": PLIP_STD}))
    return model, folder


@pytest.mark.slow
def test_plip_embeds_like_the_transformers_model(plip):
    model, folder = plip
    vlm = load_plip(folder)
    assert "PLIP" in vlm.name and "open_clip's OpenAI BPE tokenizer" in vlm.name
    assert vlm.image_size == 224 and vlm.mean == pytest.approx(PLIP_MEAN) and vlm.std == pytest.approx(PLIP_STD)
    assert all(not p.requires_grad for p in vlm.parameters()) and not vlm.train().training

    images = torch.rand(1, 3, 50, 60, requires_grad=True)
    embedded = vlm.encode_image(images)
    assert_unit_rows(embedded.detach(), (1, 512))
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=reference_preprocess(images, PLIP_MEAN, PLIP_STD)).pooler_output
        expected = F.normalize(model.visual_projection(pooled), dim=-1)
    assert torch.allclose(embedded, expected, atol=1e-5)
    embedded.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0

    text = vlm.encode_text(PROMPTS)
    assert_unit_rows(text, (3, 512))
    assert torch.equal(text[0], text[2]) and not torch.allclose(text[0], text[1], atol=1e-3)
    tokens = vlm.tokenizer(PROMPTS)
    assert tokens.shape == (3, 77) and (tokens[:, 0] == 49406).all()
    end = (tokens == 49407).int().argmax(dim=1)  # pool at the end-of-text token, whatever the config's eos id
    assert (end > 1).all() and ((tokens == 49407).sum(dim=1) == 1).all()
    with torch.no_grad():
        hidden = model.text_model(input_ids=tokens).last_hidden_state
        expected_text = F.normalize(model.text_projection(hidden[torch.arange(3), end]), dim=-1)
    assert torch.allclose(text, expected_text, atol=1e-5)


def write_clip_tokenizer_files(folder) -> None:
    """CLIP tokenizer files (vocab.json, merges.txt) made from open_clip's copy of the OpenAI BPE."""
    bpe = open_clip.SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (folder / "vocab.json").write_text(json.dumps({names.get(k, k): v for k, v in bpe.encoder.items()}))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
         "unk_token": "<|endoftext|>", "model_max_length": 77}))


@pytest.mark.slow
def test_plip_tokenizer_files_give_the_same_text_embeddings(plip, tmp_path):
    _, folder = plip
    with_tokenizer = tmp_path / "plip"
    with_tokenizer.mkdir()
    for file in folder.iterdir():
        (with_tokenizer / file.name).symlink_to(file)
    write_clip_tokenizer_files(with_tokenizer)
    fallback, vlm = load_plip(folder), load_plip(with_tokenizer)
    assert "its CLIP tokenizer" in vlm.name
    prompts = ["Tumor epithelium, with glands!", "stroma"]
    tokens, reference = vlm.tokenizer(prompts), fallback.tokenizer(prompts)
    assert tokens.shape == reference.shape == (2, 77)
    end = (reference == 49407).int().argmax(dim=1)
    for row in range(2):  # same ids up to the end token; only the padding differs (49407 vs 0)
        assert torch.equal(tokens[row, :end[row] + 1], reference[row, :end[row] + 1])
    assert torch.allclose(vlm.encode_text(prompts), fallback.encode_text(prompts), atol=1e-5)


# --- CONCH -----------------------------------------------------------------------------------------

def test_conch_without_its_package_says_how_to_install(tmp_path, monkeypatch):
    checkpoint = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(1)}, checkpoint)
    monkeypatch.setitem(sys.modules, "conch", None)  # as if not installed, even where it is
    with pytest.raises(ImportError, match="CONCH.*github.com/mahmoodlab/CONCH.*pytorch_model.bin"):
        load_conch(checkpoint)
    with pytest.raises(ImportError, match="CONCH"):
        load_vlm("conch", tmp_path)  # the folder holding pytorch_model.bin


def test_load_state_dict_strict():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    source = {k: torch.randn_like(v) for k, v in nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
              .state_dict().items()}
    load_state_dict_strict(model, source, "ckpt.bin")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items())

    missing = {k: v for k, v in source.items() if k != "2.bias"}
    with pytest.raises(ValueError, match=r"ckpt\.bin.*1 missing keys \(2\.bias\)"):
        load_state_dict_strict(model, missing, "ckpt.bin")
    with pytest.raises(ValueError, match=r"other\.pt.*1 unexpected keys \(extra\.weight\)"):
        load_state_dict_strict(model, {**source, "extra.weight": torch.zeros(1)}, "other.pt")
    with pytest.raises(ValueError, match=r"mis-shaped keys \(0\.weight\)"):
        load_state_dict_strict(model, {**source, "0.weight": torch.zeros(4, 5)}, "ckpt.bin")
    before = model.state_dict()["0.weight"].clone()
    with pytest.raises(ValueError):
        load_state_dict_strict(model, {**missing, "0.weight": torch.zeros(4, 3)}, "ckpt.bin")
    assert torch.equal(model.state_dict()["0.weight"], before)  # nothing loaded on a mismatch
