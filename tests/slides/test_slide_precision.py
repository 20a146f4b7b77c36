"""Precision of slide prediction: bf16 autocast + channels_last on AMX CPUs when ``amp`` is on, fp32 otherwise."""

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

import tissueseg.models.device as device_mod
from tissueseg.models.bundle import ModelMeta
from tissueseg.models.device import autocast, cpu_has_amx_bf16, inference_autocast, inference_dtype
from tissueseg.slides.predict import PredictOptions, fold_batch_norms, inference_model, predict_slide

from slide_helpers import CLASSES, PALETTE, write_synthetic_slide

CPU = torch.device("cpu")
FAST = dict(workers=0, batch_size=8, chunk_size=256)


@pytest.fixture
def amx(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) AMX bf16."""

    def set_amx(value: bool) -> None:
        monkeypatch.setattr(device_mod, "cpu_has_amx_bf16", lambda: value)

    return set_amx


class RecordingNet(nn.Module):
    """A small conv-BN net (colour features + 3×3 context) recording the precision it runs in."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 5, 1))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 2)
            bn = self.body[1]
            bn.running_mean.copy_(torch.randn(16, generator=g) * 0.5)
            bn.running_var.copy_(torch.rand(16, generator=g) + 0.5)
        self.meta = ModelMeta(method="test", classes=CLASSES, palette=PALETTE, label_to_mask=list(range(5)),
                              background_index=4, window=64)
        self.seen: list[dict] = []
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.body(images)
        self.seen.append({"autocast": torch.is_autocast_enabled("cpu"),
                          "autocast_dtype": torch.get_autocast_dtype("cpu"), "logits_dtype": logits.dtype,
                          "weights_channels_last": self.body[0].weight.is_contiguous(memory_format=torch.channels_last),
                          "batch_norms": sum(isinstance(m, nn.BatchNorm2d) for m in self.modules())})
        return logits.float().softmax(1)


def test_cpu_amx_detection_is_a_bool_and_matches_torch():
    caps = torch.cpu.get_capabilities()
    expected = bool(caps.get("amx_bf16") and caps.get("amx_tile") and torch.backends.mkldnn.is_available())
    assert cpu_has_amx_bf16() is expected


def test_inference_dtype_bf16_only_with_amp_on_cuda_or_amx_cpu(amx):
    amx(True)
    assert inference_dtype(CPU, True) == torch.bfloat16
    assert inference_dtype(CPU, False) == torch.float32
    with inference_autocast(CPU, True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with inference_autocast(CPU, False):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, True):  # training / evaluation autocast: never bf16 on CPU, AMX or not
        assert not torch.is_autocast_enabled("cpu")
    assert inference_dtype(torch.device("cuda"), True) == torch.bfloat16
    assert inference_dtype(torch.device("cuda"), False) == torch.float32
    amx(False)
    assert inference_dtype(CPU, True) == torch.float32
    with inference_autocast(CPU, True):
        assert not torch.is_autocast_enabled("cpu")


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory):
    return write_synthetic_slide(tmp_path_factory.mktemp("precision") / "slide.tif", 400, 300, mpp=None)


def test_amp_on_an_amx_cpu_runs_bf16_channels_last_and_leaves_the_model_alone(amx, small_slide, tmp_path):
    amx(True)
    model = RecordingNet()
    summary = predict_slide(model, small_slide, tmp_path / "bf16", PredictOptions(**FAST, amp=True))
    assert summary["precision"] == "bf16"
    assert not model.seen  # a prepared copy ran, not the caller's module
    # the copy: one record per batch, all bf16 with channels_last weights and the batch norm folded away
    copy = inference_model(model, CPU, True)
    assert copy is not model
    with inference_autocast(CPU, True), torch.inference_mode():
        copy(torch.rand(2, 3, 64, 64))
    (rec,) = copy.seen
    assert rec == {"autocast": True, "autocast_dtype": torch.bfloat16, "logits_dtype": torch.bfloat16,
                   "weights_channels_last": True, "batch_norms": 0}
    assert model.body[0].weight.is_contiguous() and isinstance(model.body[1], nn.BatchNorm2d)  # caller's untouched


def test_amp_off_or_no_amx_runs_the_model_itself_in_fp32(amx, small_slide, tmp_path):
    for has_amx, amp in ((True, False), (False, True)):
        amx(has_amx)
        model = RecordingNet()
        summary = predict_slide(model, small_slide, tmp_path / f"fp32_{has_amx}_{amp}", PredictOptions(**FAST, amp=amp))
        assert summary["precision"] == "fp32"
        assert model.seen and all(r == {"autocast": False, "autocast_dtype": torch.bfloat16,
                                        "logits_dtype": torch.float32, "weights_channels_last": False,
                                        "batch_norms": 1} for r in model.seen)


def test_bf16_and_fp32_class_maps_agree(amx, tmp_path):
    amx(True)
    slide = write_synthetic_slide(tmp_path / "slide.tif", 640, 480, mpp=None)
    maps = {}
    for amp in (False, True):
        model = RecordingNet()
        predict_slide(model, slide, tmp_path / str(amp), PredictOptions(**FAST, amp=amp, tissue_detection=False))
        maps[amp] = tifffile.imread(tmp_path / str(amp) / "classmap.tif", level=0)
    fp32, bf16 = maps[False], maps[True]
    assert fp32.shape == bf16.shape == (480, 640)
    assert len(np.unique(fp32)) >= 3  # a map with regions, not one class everywhere
    agree = (fp32 == bf16).mean()
    assert agree > 0.99, agree
    assert agree < 1.0 or not cpu_has_amx_bf16()  # bf16 really ran (rounding moves some boundary pixels)


def test_fold_batch_norms_keeps_the_outputs_and_skips_custom_sequentials():
    class Custom(nn.Sequential):  # runs its children out of order: must not be folded
        def forward(self, x):
            return self[0](x) + 1

    model = RecordingNet()
    model.extra = Custom(nn.Conv2d(5, 5, 1), nn.BatchNorm2d(5)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model.body(x)
        assert fold_batch_norms(model) == 1
        after = model.body(x)
    assert isinstance(model.body[1], nn.Identity) and isinstance(model.extra[1], nn.BatchNorm2d)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("flag, amp", [([], True), (["--no-amp"], False), (["--amp"], True)])
def test_cli_amp_flag_reaches_the_prediction_options(monkeypatch, tmp_path, flag, amp):
    from typer.testing import CliRunner

    import tissueseg.slides.predict as predict_mod
    from tissueseg.cli import app

    seen = []

    def fake_predict_slides(model, inputs, out, options, **kw):
        seen.append(options)
        return predict_mod.BatchResult()

    monkeypatch.setattr(predict_mod, "predict_slides", fake_predict_slides)
    (tmp_path / "model.pt").write_bytes(b"")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "model.pt"), str(tmp_path), "--out",
                                      str(tmp_path / "out"), *flag])
    assert result.exit_code == 0, result.output
    assert [o.amp for o in seen] == [amp]
