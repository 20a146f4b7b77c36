"""PLIMSeg end to end on a tiny synthetic set: matcher, stage 1 with the matching losses, stage 2, export."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tissueseg.cli import app
from tissueseg.config import WSSSConfig
from tissueseg.data.synthetic import write_synthetic_dataset
from tissueseg.models.bundle import load_predictor
from tissueseg.engine.run import RunContext
from tissueseg.methods.plimseg import build_matcher, loss_ablations, run_plimseg, train_plim_classifier

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("plimseg")
    write_synthetic_dataset(root / "data", n_train=16, n_val=6, n_test=6, size=64, seed=3)
    config = {
        "method": "plimseg", "out_dir": str(root / "run"), "seed": 0,
        "data": {"path": str(root / "data"), "format": "luad-histoseg", "crop_size": 64},
        "backbone": {"name": "efficientnet_lite0", "pretrained": False, "output_stride": 16},
        "classifier": {"epochs": 1, "batch_size": 8},
        "segmenter": {"epochs": 1, "batch_size": 8, "decoder_channels": 16},
        "plimseg": {"matcher": {"epochs": 1, "batch_size": 8}},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def step_events(out_dir):
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()
            if json.loads(line)["event"] in ("step", "epoch")]


def test_run_trains_matcher_stage1_stage2_exports_and_resumes(tiny_config):
    _, config = tiny_config
    run = RunContext.open(WSSSConfig.model_validate(config))
    results = run_plimseg(run)
    out = run.out_dir
    assert set(results) == {"matcher", "plimseg_cam_pseudo_masks", "plimseg_cam"}
    assert results["matcher"].startswith("label-trained matcher (efficientnet_lite0")
    for name in ("matcher", "plim_classifier", "plimseg_cam_segmenter"):
        assert (out / "checkpoints" / f"{name}_best.pt").exists()
    assert len(list((out / "plimseg_cam_masks" / "layer0").glob("*.png"))) == 16
    assert 0.0 <= results["plimseg_cam"]["test"]["miou"] <= 1.0
    assert json.loads((out / "metrics.json").read_text())["matcher"] == results["matcher"]
    assert load_predictor(out / "model.pt").meta.method == "plimseg"
    stage1 = [e for e in step_events(out) if e.get("stage") == "plim_classifier" and e["event"] == "epoch"]
    assert stage1 and all(e["train_otm"] > 0 and e["train_btm"] > 0 and e["train_area"] > 0 for e in stage1)

    before = step_events(out)
    again = run_plimseg(RunContext.open(WSSSConfig.model_validate(config)))
    assert step_events(out) == before  # nothing retrained
    assert again["plimseg_cam"]["test"] == results["plimseg_cam"]["test"]


def test_matcher_stays_frozen_while_stage1_trains(tiny_config, tmp_path):
    _, config = tiny_config
    config = {**config, "out_dir": str(tmp_path / "frozen"),
              "plimseg": {"matcher": {"epochs": 1, "batch_size": 8, "text": "learnable"}, "losses": ["otm", "btm"]}}
    run = RunContext.open(WSSSConfig.model_validate(config))
    matcher = build_matcher(run)
    assert "learnable text" in matcher.name
    frozen = {k: v.clone() for k, v in matcher.state_dict().items()}
    classifier = train_plim_classifier(run, matcher)
    assert all(torch.equal(frozen[k], v) for k, v in matcher.state_dict().items())
    assert not any(p.requires_grad for p in matcher.parameters())
    epochs = [e for e in step_events(run.out_dir) if e.get("stage") == "plim_classifier" and e["event"] == "epoch"]
    assert {k for k in epochs[0] if k.startswith("train_")} == {"train_loss", "train_cls", "train_otm",
                                                                   "train_btm"}
    assert classifier.classifier.weight.shape[0] == 4


def test_cli_runs_plimseg_stages_and_reports_clear_errors(tiny_config, tmp_path):
    path, config = tiny_config
    runner = CliRunner()
    result = runner.invoke(app, ["wsss", "run", str(path)])  # resumes the run of the test above when it ran
    assert result.exit_code == 0, result.output
    assert "PLIMSeg matcher: label-trained" in result.output
    result = runner.invoke(app, ["wsss", "evaluate", str(path)])
    assert result.exit_code == 0, result.output
    assert "PLIMSeg" in result.output and "MLPS" not in result.output

    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(yaml.safe_dump(dict(config, out_dir=str(tmp_path / "fresh"))))
    result = runner.invoke(app, ["wsss", "train-seg", str(fresh)])
    assert result.exit_code == 1 and "wsss pseudo-masks" in result.output

    clip = tmp_path / "clip.yaml"
    clip.write_text(yaml.safe_dump(dict(config, out_dir=str(tmp_path / "clip"),
                                        plimseg={"matcher": {"kind": "quiltnet"}})))
    result = runner.invoke(app, ["wsss", "train-cls", str(clip)])
    assert result.exit_code == 1 and "QuiltNet" in result.output


def test_loss_ablations_reuse_the_matcher_and_drop_one_loss_each(tiny_config):
    _, config = tiny_config
    run_plimseg(RunContext.open(WSSSConfig.model_validate(config)))  # resumes: the matcher exists
    ablated = WSSSConfig.model_validate({**config, "plimseg": {**config["plimseg"], "losses": ["otm", "area"]}})
    reports = loss_ablations(ablated)
    assert set(reports) == {"no_otm", "no_area"}
    for loss, kept in (("otm", "train_area"), ("area", "train_otm")):
        events = step_events(ablated.out_dir / f"no_{loss}")
        assert not [e for e in events if e.get("stage") == "matcher" and e["event"] == "step"]  # not retrained
        epochs = [e for e in events if e.get("stage") == "plim_classifier" and e["event"] == "epoch"]
        assert epochs and all(f"train_{loss}" not in e and kept in e for e in epochs)
        assert 0.0 <= reports[f"no_{loss}"]["layers"][0]["miou"] <= 1.0
    assert set(loss_ablations(ablated, losses=["area"])) == {"no_area"}  # only the named ones
    with pytest.raises(ValueError, match="btm"):
        loss_ablations(ablated, losses=["btm"])  # not among this run's losses


def test_changed_prompts_or_losses_refuse_to_reuse_stale_checkpoints(tiny_config):
    _, config = tiny_config
    run_plimseg(RunContext.open(WSSSConfig.model_validate(config)))  # resumes: everything exists
    prompts = {**config, "plimseg": {**config["plimseg"], "prompts": {"background": ["blank glass"]}}}
    with pytest.raises(ValueError, match=r"matcher was trained with other settings \(prompts changed\)"):
        run_plimseg(RunContext.open(WSSSConfig.model_validate(prompts)))
    losses = {**config, "plimseg": {**config["plimseg"], "losses": ["otm"]}}
    with pytest.raises(ValueError, match=r"plim_classifier was trained with other settings \(losses changed\)"):
        run_plimseg(RunContext.open(WSSSConfig.model_validate(losses)))


def test_stage1_starts_from_a_trained_classifier_at_the_scaled_learning_rate(tiny_config, tmp_path):
    from tissueseg.methods import mlps

    _, config = tiny_config
    base = {**config, "method": "mlps", "out_dir": str(tmp_path / "mlps")}
    mlps_run = RunContext.open(WSSSConfig.model_validate(base))
    trained = mlps.train_classifier(mlps_run, pda=False)
    init = mlps_run.out_dir / "checkpoints" / "classifier_best.pt"
    fine = {**config, "out_dir": str(tmp_path / "fine"),
            "plimseg": {**config["plimseg"], "init_classifier": str(init), "init_lr_scale": 1e-9}}
    run = RunContext.open(WSSSConfig.model_validate(fine))
    classifier = train_plim_classifier(run, build_matcher(run))
    head = classifier.classifier.weight.detach().cpu()
    # lr × 1e-9 barely moves it: it starts from the trained weights, not from a fresh head
    assert torch.allclose(head, trained.classifier.weight.detach().cpu(), atol=1e-5)
    fresh = RunContext.open(WSSSConfig.model_validate({**config, "out_dir": str(tmp_path / "fresh")}))
    assert not torch.allclose(train_plim_classifier(fresh, build_matcher(fresh)).classifier.weight.detach().cpu(),
                              head, atol=1e-3)
    settings = json.loads((run.out_dir / "checkpoints" / "plim_classifier_settings.json").read_text())
    assert settings["init_classifier"] == str(init) and settings["init_lr_scale"] == 1e-9


def test_a_missing_or_foreign_start_checkpoint_names_the_file(tiny_config, tmp_path):
    from tissueseg.methods import mlps

    _, config = tiny_config
    run = RunContext.open(WSSSConfig.model_validate({**config, "out_dir": str(tmp_path / "run")}))
    model = mlps.build_classifier(run.config, run.space.num_classes)
    with pytest.raises(FileNotFoundError, match="missing_best.pt.*train stage 1 first"):
        mlps.load_classifier_weights(model, tmp_path / "missing_best.pt")
    foreign = tmp_path / "foreign_best.pt"
    torch.save({"model": {"weight": torch.zeros(2)}}, foreign)
    with pytest.raises(ValueError, match="foreign_best.pt: not a stage-1 checkpoint"):
        mlps.load_classifier_weights(model, foreign)
