"""MLPS end to end on a tiny synthetic set: every stage, outputs, resume, model export."""

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from tissueseg.cli import app
from tissueseg.config import WSSSConfig
from tissueseg.data.synthetic import write_synthetic_dataset
from tissueseg.models.bundle import load_predictor
from tissueseg.engine.run import RunContext
from tissueseg.methods.mlps import run_mlps

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlps")
    write_synthetic_dataset(root / "data", n_train=16, n_val=6, n_test=6, size=64, seed=3)
    config = {
        "out_dir": str(root / "run"), "seed": 0,
        "data": {"path": str(root / "data"), "format": "luad-histoseg", "crop_size": 64},
        "backbone": {"name": "efficientnet_lite0", "pretrained": False, "output_stride": 16},
        "classifier": {"epochs": 2, "batch_size": 8, "pda_start_epoch": 1},
        "segmenter": {"epochs": 1, "batch_size": 8, "decoder_channels": 16},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def step_events(out_dir):
    lines = (out_dir / "log.jsonl").read_text().splitlines()
    return sum(json.loads(line)["event"] == "step" for line in lines)


def test_run_writes_every_output_and_resumes_without_retraining(tiny_config):
    _, config = tiny_config
    run = RunContext.open(WSSSConfig.model_validate(config))
    results = run_mlps(run, references=True)
    out = run.out_dir
    assert set(results) == {"mlps_pseudo_masks", "mlps", "cam_pseudo_masks", "cam", "supervised"}
    for layer in range(3):
        assert len(list((out / "pseudo_masks" / f"layer{layer}").glob("*.png"))) == 16
    assert results["mlps_pseudo_masks"]["scored_against_ground_truth"] == 16
    assert 0.0 <= results["mlps"]["test"]["miou"] <= 1.0
    assert (out / "config.yaml").exists() and (out / "metrics.json").exists()
    assert list((out / "overlays" / "mlps").glob("*.png"))
    for name in ("classifier", "segmenter", "cam_classifier", "supervised"):
        assert (out / "checkpoints" / f"{name}_best.pt").exists()
    # the shipped stage-1 classifier is the best validation F1's (select: last ships the last epoch's)
    shipped = torch.load(out / "checkpoints" / "classifier_best.pt", weights_only=False)["metrics"]
    f1 = [json.loads(line)["val_f1"] for line in (out / "log.jsonl").read_text().splitlines()
          if '"event": "epoch"' in line and '"stage": "classifier"' in line]
    assert shipped["val_f1"] == max(f1)

    steps_before = step_events(out)
    again = run_mlps(RunContext.open(WSSSConfig.model_validate(config)), references=True)
    assert step_events(out) == steps_before  # nothing retrained
    assert again["mlps"]["test"] == results["mlps"]["test"]


def test_exported_model_predicts_probabilities_in_mask_classes(tiny_config):
    _, config = tiny_config
    predictor = load_predictor(f"{config['out_dir']}/model.pt")
    assert predictor.meta.classes[-1] == "background" and predictor.classifier is not None
    tiles = torch.rand(2, 3, 64, 64)
    tiles[:, :, :20, :20] = 1.0  # a white corner → background
    probs = predictor(tiles)
    assert probs.shape == (2, 5, 64, 64)
    assert torch.all(probs[:, 4, :20, :20] == 1.0)
    sums = probs[:, :4].sum(1)[:, 30:, 30:]
    assert torch.all(sums <= 1.0 + 1e-5)


def test_cli_stages_and_clear_errors(tiny_config, tmp_path):
    path, config = tiny_config
    runner = CliRunner()
    result = runner.invoke(app, ["wsss", "evaluate", str(path)])
    assert result.exit_code == 0, result.output
    assert "MLPS" in result.output

    missing = dict(config, data={**config["data"], "path": str(tmp_path / "nowhere")}, out_dir=str(tmp_path / "r"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(missing))
    result = runner.invoke(app, ["wsss", "run", str(bad)])
    assert result.exit_code == 1 and "nowhere" in result.output

    fresh = dict(config, out_dir=str(tmp_path / "fresh"))
    cfg = tmp_path / "fresh.yaml"
    cfg.write_text(yaml.safe_dump(fresh))
    result = runner.invoke(app, ["wsss", "train-seg", str(cfg)])
    assert result.exit_code == 1 and "wsss pseudo-masks" in result.output

    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump(dict(config, classifer={"epochs": 1})))
    result = runner.invoke(app, ["wsss", "run", str(typo)])
    assert result.exit_code == 1 and "classifer" in result.output


def test_pseudo_masks_are_palette_pngs_with_label_classes_only(tiny_config):
    from PIL import Image

    _, config = tiny_config
    out = config["out_dir"]
    train = sorted((__import__("pathlib").Path(config["data"]["path"]) / "training").glob("*.png"))
    for image_path in train[:5]:
        labels = [int(v) for v in image_path.stem.split("[")[1].rstrip("]").split()]
        mask = Image.open(f"{out}/pseudo_masks/layer2/{image_path.stem}.png")
        assert mask.mode == "P"
        values = set(np.unique(np.asarray(mask)).tolist())
        allowed = {k for k, v in enumerate(labels) if v} | {4}
        assert values <= allowed


def test_weak_stages_default_to_the_papers_output_stride_8_and_semi_keeps_16(tmp_path):
    from tissueseg.config import SemiConfig
    from tissueseg.methods.mlps import build_classifier, build_segmenter

    data = {"path": str(tmp_path), "format": "folder"}
    cfg = WSSSConfig.model_validate({"out_dir": str(tmp_path / "run"), "data": data,
                                     "backbone": {"name": "efficientnet_lite0"}})
    assert cfg.backbone.output_stride == 8
    assert SemiConfig.model_validate({"out_dir": str(tmp_path / "semi"), "data": data}).backbone.output_stride == 16
    x = torch.rand(1, 3, 64, 64)
    assert build_classifier(cfg, 3).cam(x).shape[-1] == 8  # 64 / 8
    assert build_segmenter(cfg, 3).encoder(x)[-1].shape[-1] == 8
