import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from tissueseg.config import SemiConfig, UniSemAlignSettings
from tissueseg.data.sample import DatasetInfo
from tissueseg.engine.data import LabelSpace
from tissueseg.engine.losses import masked_cross_entropy
from tissueseg.engine.run import RunContext
from tissueseg.methods.unisemalign import (PAPER_RECIPE, SemiPairs, alignment_loss, batch_confidence, build_network,
                                           cosine_logits, cutmix, cutmix_box, ema_threshold, evaluate_rows, fuse_scores,
                                           kl_consistency, labelled_records, run_semi, sigmoid_ramp_up,
                                           unisemalign_losses)
from tissueseg.models.unisemalign import UniSemAlignNet


# --- losses on hand-computed cases ---------------------------------------------------------------

def test_prototype_cosine_logits():
    pixels = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]])  # (1, D=2, 1, 2): v0 = (1, 0), v1 = (1, 1)
    classes = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # magnitudes do not matter
    s = cosine_logits(pixels, classes)
    r = 1 / math.sqrt(2)
    assert torch.allclose(s, torch.tensor([[[[1.0, r]], [[0.0, r]]]]), atol=1e-6)
    assert torch.allclose(cosine_logits(pixels, classes, scale=2.0), 2 * s)


def test_alignment_mse_of_normalised_prototypes_and_text():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    text = torch.tensor([[0.0, 1.0], [0.0, 5.0]])
    # normalised: P = [[1, 0], [0, 1]], T = [[0, 1], [0, 1]] → squared errors 1, 1, 0, 0 → mean 0.5
    assert alignment_loss(prototypes, text).item() == pytest.approx(0.5)
    assert alignment_loss(prototypes, 3 * prototypes).item() == pytest.approx(0.0)


def test_fused_scores():
    dl = torch.tensor([1.0, 2.0])
    proto = torch.tensor([1.0, -1.0])
    text = torch.tensor([0.0, 1.0])
    assert torch.allclose(fuse_scores(dl, proto, text, 0.1, 0.1), torch.tensor([1.1, 2.0]))
    assert torch.allclose(fuse_scores(dl, None, text, 0.1, 0.5), torch.tensor([1.0, 2.5]))
    assert torch.equal(fuse_scores(dl), dl)


def _logits(probs):  # (N, C, H, W) logits whose softmax is ``probs``
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def test_ema_threshold_update():
    # pixels: [0.9, 0.1] → class 0 (0.9); [0.6, 0.4] → class 0 (0.6); [0.2, 0.8] → class 1 (0.8)
    logits = _logits([[[[0.9, 0.6, 0.2]], [[0.1, 0.4, 0.8]]]])
    assert batch_confidence(logits).item() == pytest.approx(0.85)  # mean of the per-class maxima 0.9, 0.8
    t = ema_threshold(torch.tensor(0.7), logits, momentum=0.999)
    assert t.item() == pytest.approx(0.999 * 0.7 + 0.001 * 0.85)
    assert ema_threshold(torch.tensor(0.7), logits, momentum=0.5).item() == pytest.approx(0.775)
    valid = torch.tensor([[[False, True, True]]])  # the 0.9 pixel is ignored → (0.6 + 0.8) / 2
    assert batch_confidence(logits, valid).item() == pytest.approx(0.7)
    nothing = torch.zeros(1, 1, 3, dtype=torch.bool)
    assert ema_threshold(torch.tensor(0.7), logits, 0.5, nothing).item() == pytest.approx(0.7)


def test_cutmix_mixes_image_and_label_with_the_same_box():
    labels = torch.tensor([0, 1, 2]).view(3, 1, 1).expand(3, 4, 4).clone()
    images = labels[:, None].float().expand(3, 3, 4, 4).clone()  # every pixel's value = its label
    box = torch.zeros(3, 4, 4, dtype=torch.bool)
    box[0, 1:3, 1:3] = True
    box[2, :, 2:] = True
    mixed_images, mixed_labels = cutmix(images, box), cutmix(labels, box)
    assert torch.equal(mixed_images[:, 0].long(), mixed_labels)  # image and label agree everywhere
    # partner = previous sample (roll by 1): sample 0 gets sample 2 in its box, sample 2 gets sample 1
    assert mixed_labels[0, 1, 1] == 2 and mixed_labels[0, 0, 0] == 0
    assert torch.equal(mixed_labels[1], labels[1])
    assert torch.equal(mixed_labels[2, :, 2:], torch.ones(4, 2, dtype=torch.long))
    assert torch.equal(mixed_labels[2, :, :2], torch.full((4, 2), 2))


def test_cutmix_box():
    g = torch.Generator().manual_seed(0)
    assert not cutmix_box(32, p=0.0, generator=g).any()
    areas = [cutmix_box(32, p=1.0, generator=g).float().mean().item() for _ in range(20)]
    assert all(0.0 < a <= 0.45 for a in areas)


def test_masked_ce_and_kl_normalise_by_valid_pixels():
    logits = torch.zeros(1, 2, 1, 2)  # uniform: CE = log 2 per pixel
    target = torch.zeros(1, 1, 2, dtype=torch.long)
    keep = torch.tensor([[[True, False]]])
    assert masked_cross_entropy(logits, target, keep, 2).item() == pytest.approx(math.log(2) / 2)
    weak = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])  # one-hot class 0: KL = −log 0.5 = log 2
    assert kl_consistency(logits, weak, torch.ones(1, 1, 2, dtype=torch.bool), 2).item() == pytest.approx(math.log(2))


def test_total_loss_combines_the_paper_weights():
    torch.manual_seed(0)
    n, c, h = 2, 3, 8
    out = {"labelled": torch.randn(n, c, h, h), "weak": torch.randn(n, c, h, h), "weak_fp": torch.randn(n, c, h, h),
           "strong": torch.randn(n, c, h, h), "labelled_pixel": torch.randn(n, 16, 2, 2),
           "weak_pixel": torch.randn(n, 16, 2, 2), "strong_pixel": torch.randn(n, 16, 2, 2),
           "prototypes": torch.randn(c, 16), "text": torch.randn(c, 16)}
    box = torch.zeros(n, h, h, dtype=torch.bool)
    box[0, :4, :4] = True
    batch = {"mask": torch.randint(0, c, (n, h, h)), "box": box}
    settings = UniSemAlignSettings(threshold_momentum=0.0, **PAPER_RECIPE)
    losses, threshold = unisemalign_losses(out, batch, torch.tensor(0.0), settings)
    assert threshold.item() == pytest.approx(batch_confidence(out["weak"]).item())
    expected = (0.5 * losses["loss_x"] + 0.25 * (losses["loss_strong"] + losses["loss_kl"] + losses["loss_fp"])
                + losses["loss_proto"] + losses["loss_text"] + losses["loss_align"]) / 2
    assert losses["loss"].item() == pytest.approx(expected.item())
    assert losses["loss_x"].item() == pytest.approx(F.cross_entropy(out["labelled"], batch["mask"]).item())
    assert losses["loss_align"].item() == pytest.approx(alignment_loss(out["prototypes"], out["text"]).item())
    official = unisemalign_losses(out, batch, torch.tensor(0.0),
                                  UniSemAlignSettings(strong_target="strong", **PAPER_RECIPE))[0]
    assert official["loss_strong"].item() != pytest.approx(losses["loss_strong"].item())
    no_align = unisemalign_losses(out, batch, torch.tensor(0.0), UniSemAlignSettings(alignment="none"))[0]
    assert "loss_align" not in no_align


def test_default_recipe_ramps_the_unlabelled_terms_and_uses_a_fixed_threshold():
    torch.manual_seed(0)
    n, c, h = 2, 2, 8
    out = {"labelled": torch.randn(n, c, h, h), "weak": 4 * torch.randn(n, c, h, h),
           "weak_fp": torch.randn(n, c, h, h), "strong": torch.randn(n, c, h, h)}
    batch = {"mask": torch.randint(0, c, (n, h, h)), "box": torch.zeros(n, h, h, dtype=torch.bool)}
    s = UniSemAlignSettings()
    assert s.threshold == "fixed" and s.ramp_up == pytest.approx(0.3)
    assert sigmoid_ramp_up(0.0, 0.3) == pytest.approx(math.exp(-5))
    assert sigmoid_ramp_up(0.15, 0.3) == pytest.approx(math.exp(-1.25))
    assert sigmoid_ramp_up(0.3, 0.3) == 1.0 and sigmoid_ramp_up(0.0, 0.0) == 1.0
    for progress in (0.0, 0.15, 1.0):
        losses, threshold = unisemalign_losses(out, batch, torch.tensor(0.5), s, progress)
        r = sigmoid_ramp_up(progress, s.ramp_up)
        expected = (2.0 * losses["loss_x"] + r * (1.0 * losses["loss_strong"] + 0.5 * losses["loss_kl"]
                                                  + 1.0 * losses["loss_fp"])) / 2
        assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    # fixed threshold: exactly the pixels whose weak confidence reaches 0.95 count, whatever the EMA says
    conf = out["weak"].softmax(1).max(1).values
    assert losses["mask_ratio"].item() == pytest.approx((conf >= 0.95).float().mean().item())
    assert 0 < losses["mask_ratio"].item() < 1
    ema = unisemalign_losses(out, batch, torch.tensor(0.5), UniSemAlignSettings(threshold="ema",
                                                                                threshold_momentum=1.0))[0]
    assert ema["mask_ratio"].item() == pytest.approx((conf >= 0.5).float().mean().item())


def test_binary_label_space():
    info = DatasetInfo("ebhi-seg", ["background", "a", "b"], ["a", "b"], [(0, 0, 0)] * 3, background_index=0)
    space = LabelSpace.every_class(info, binary=True)
    assert space.names == ["background", "gland"] and space.background == 0
    assert space.mask_to_label(np.array([0, 1, 2, 255])).tolist() == [0, 1, 1, 255]
    full = LabelSpace.every_class(info)
    assert full.num_classes == 3 and full.mask_to_label(np.array([2, 7])).tolist() == [2, 255]
    with pytest.raises(ValueError, match="needs a background class"):
        LabelSpace.every_class(DatasetInfo("folder", ["x", "y"], ["x", "y"], [(0, 0, 0)] * 2), binary=True)


# --- end to end on a tiny synthetic set -----------------------------------------------------------

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny CPU steps run fastest (and steadiest on a shared machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from tissueseg.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("semi") / "data", n_train=16, n_val=4, n_test=4,
                                   size=64, seed=0, labelled_fraction=0.25, cases=8)


def make_run(data, out, **overrides):
    raw = {"data": {"path": str(data), "format": "luad-histoseg", "crop_size": 64},
           "backbone": {"name": "efficientnet_lite0", "pretrained": False},
           "train": {"epochs": 1, "batch_size": 2, "lr": 0.01, "decoder_channels": 16, "max_steps_per_epoch": 2},
           "evaluation": {"window": 64, "stride": 48, "overlays": 1},
           "text": {"encoder": "learnable"}, "out_dir": str(out), "amp": False, "channels_last": False}
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return RunContext.open(SemiConfig.model_validate(raw), console=Console(quiet=True))


def test_pairs_dataset_and_labelled_split(tiny_data, tmp_path):
    run = make_run(tiny_data, tmp_path)
    labelled, unlabelled = labelled_records(run)
    assert len(labelled) == 3 and len(unlabelled) == 13  # splits/labelled.txt
    assert not {r.case_id for r in labelled} & {r.case_id for r in unlabelled}
    by_count = labelled_records(make_run(tiny_data, tmp_path, labelled_count=4))[0]
    assert len({r.case_id for r in by_count}) >= 1 and len(by_count) >= 4
    space = LabelSpace.every_class(run.info)
    assert space.num_classes == 5 and space.background == 4  # white background is its own class
    pairs = SemiPairs(run.dataset, labelled, unlabelled, space, 64)
    from torchvision.transforms import v2

    from tissueseg.data.transforms import CropScaledResizedCrop
    crops = [type(t) for t in pairs.weak.transforms if isinstance(t, v2.RandomResizedCrop)]
    assert crops == [CropScaledResizedCrop]  # default: crops at the images' own pixel scale
    image_crop = SemiPairs(run.dataset, labelled, unlabelled, space, 64, crop_scale_of="image")
    assert [type(t) for t in image_crop.weak.transforms if isinstance(t, v2.RandomResizedCrop)] == [v2.RandomResizedCrop]
    item = pairs[0]
    assert len(pairs) == 13
    assert item["image"].shape == item["weak"].shape == item["strong"].shape == (3, 64, 64)
    assert item["mask"].shape == (64, 64) and int(item["mask"].max()) <= 4
    assert item["box"].dtype == torch.bool and item["strong"].min() >= 0 and item["strong"].max() <= 1


def test_train_evaluate_resume_and_export(tiny_data, tmp_path):
    from tissueseg.models.bundle import load_predictor

    run = make_run(tiny_data, tmp_path)
    results = run_semi(run, ["unisemalign"])
    test = results["unisemalign"]["test"]
    assert 0.0 <= test["mdice"] <= 1.0 and set(test["dice"]) == set(run.info.classes)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    row = next(e for e in log if e["event"] == "row" and e["stage"] == "unisemalign")
    assert row["text_encoder"] == "learnable" and row["labelled"] == 3 and row["prototypes"]
    # warm start (default): the supervised-only row was trained first and the semi row started from it
    assert row["warm_start"] and (tmp_path / "checkpoints" / "supervised_best.pt").exists()
    assert [e["stage"] for e in log if e["event"] == "row"] == ["supervised", "unisemalign"]
    start, epoch = [e for e in log if e["event"] == "epoch" and e["stage"] == "unisemalign"][:2]
    assert start["epoch"] == 0 and "val_mdice" in start  # the warm start, validated before the first step
    assert {"train_loss_proto", "train_loss_text", "train_loss_align", "train_threshold", "val_mdice"} <= set(epoch)
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "overlays" / "unisemalign").is_dir()
    state = torch.load(tmp_path / "checkpoints" / "unisemalign_last.pt", weights_only=False)
    assert 0.69 < float(state["model"]["threshold"]) < 0.71  # EMA threshold is checkpointed
    # a second epoch resumes from the checkpoint rather than starting over
    run2 = make_run(tiny_data, tmp_path, train={"epochs": 2})
    run_semi(run2, ["unisemalign"], evaluate=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert any(e["event"] == "resume" and e["stage"] == "unisemalign" for e in log)
    assert torch.load(tmp_path / "checkpoints" / "unisemalign_last.pt", weights_only=False)["epoch"] == 2
    evaluate_rows(run2)
    predictor = load_predictor(tmp_path / "model.pt")
    probs = predictor(torch.rand(1, 3, 64, 64))
    assert probs.shape == (1, 5, 64, 64) and predictor.meta.method == "unisemalign"


def test_consistency_row_has_no_branches_and_missing_checkpoint_is_clear(tiny_data, tmp_path):
    run = make_run(tiny_data, tmp_path)
    from tissueseg.methods.unisemalign import semi_space

    net = build_network(run.config, semi_space(run), "consistency")
    assert isinstance(net, UniSemAlignNet) and net.prototypes is None and net.text is None and net.project is None
    with pytest.raises(FileNotFoundError, match="semi train"):
        evaluate_rows(run)


def test_cli_bad_config_names_the_file(tmp_path):
    from typer.testing import CliRunner

    from tissueseg.cli import app

    runner = CliRunner()
    missing = tmp_path / "missing.yaml"
    result = runner.invoke(app, ["semi", "train", str(missing)])
    assert result.exit_code == 1 and "missing.yaml" in result.output and "not found" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data: {{path: {tmp_path}}}\nlabelled_count: 8\nlabelled_fraction: 0.1\n")
    result = runner.invoke(app, ["semi", "evaluate", str(bad)])
    assert result.exit_code == 1 and "bad.yaml" in result.output and "not both" in result.output


def test_frozen_vit_encoder_step_trains_projections_decoder_and_branches():
    from tissueseg.methods.unisemalign import parameter_groups

    cfg = SemiConfig.model_validate({"data": {"path": "x"}, "backbone": {"name": "vit_tiny_tokens", "freeze": True},
                                     "train": {"decoder_channels": 16}, "text": {"encoder": "learnable"}})
    info = DatasetInfo("glas", ["background", "gland"], [], [(0, 0, 0), (255, 255, 255)], background_index=0)
    space = LabelSpace.every_class(info, binary=True)
    torch.manual_seed(0)
    net = build_network(cfg, space, "unisemalign")
    images = torch.rand(2, 3, 32, 32)
    box = torch.zeros(2, 32, 32, dtype=torch.bool)
    out = net(images, torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    assert out["labelled"].shape == out["weak_fp"].shape == (2, 2, 32, 32) and out["labelled_pixel"].shape[1] == 256
    batch = {"mask": torch.randint(0, 2, (2, 32, 32)), "box": box}
    losses, _ = unisemalign_losses(out, batch, net.threshold, cfg.unisemalign)
    losses["loss"].backward()
    vit = net.segmenter.encoder.backbone
    assert all(p.grad is None for p in vit.vit.parameters())
    assert vit.projections[0].weight.grad is not None and net.prototypes.grad is not None
    base, head = parameter_groups(net, 10.0)
    assert {id(p) for p in base["params"]} == {id(p) for p in vit.projections.parameters()}
    assert head["lr_mult"] == 10.0 and any(p is net.prototypes for p in head["params"])


def test_warm_start_loads_the_supervised_weights(tiny_data, tmp_path, monkeypatch):
    import tissueseg.methods.unisemalign as usa

    run = make_run(tiny_data, tmp_path)
    supervised = usa.train_row(run, "supervised")
    started: dict = {}

    class Stop(Exception):
        pass

    def fit(self, *args, **kwargs):  # capture the weights the semi row starts from, then stop
        started.update({k: v.clone() for k, v in usa.segmenter_of(self.model).state_dict().items()})
        started["teacher"] = self.model.teacher
        started["evaluate_start"] = kwargs.get("evaluate_start")
        raise Stop

    monkeypatch.setattr(usa.Trainer, "fit", fit)
    with pytest.raises(Stop):
        usa.train_row(run, "consistency", settings=run.config.unisemalign.model_copy(update={"teacher": "mean"}))
    reference = supervised.state_dict()
    assert all(torch.equal(started[k].cpu(), reference[k].cpu()) for k in reference)
    # the mean teacher (an option) starts as the same weights, frozen
    teacher = started["teacher"].state_dict()
    assert all(torch.equal(teacher[k].cpu(), reference[k].cpu()) for k in reference)
    assert not any(p.requires_grad for p in started["teacher"].parameters())
    with pytest.raises(Stop):
        usa.train_row(run, "consistency", settings=run.config.unisemalign.model_copy(update=PAPER_RECIPE))
    assert not all(torch.equal(started[k].cpu(), reference[k].cpu()) for k in reference if k.endswith("weight"))
    assert started["teacher"] is None and started["evaluate_start"] is None
    with pytest.raises(Stop):
        usa.train_row(run, "consistency")  # the default: warm start, no teacher
    assert all(torch.equal(started[k].cpu(), reference[k].cpu()) for k in reference) and started["teacher"] is None
    # the warm-start weights are validated first: they stay the row's model unless an epoch beats them
    assert set(started["evaluate_start"](usa.segmenter_of(supervised))) == {
        "val_mdice", "val_mjaccard", "val_dice_fg", "val_jaccard_fg"}


def test_mean_teacher_is_an_ema_of_the_segmenter_and_makes_the_pseudo_labels(tiny_data, tmp_path):
    import tissueseg.methods.unisemalign as usa

    run = make_run(tiny_data, tmp_path)
    net = usa.build_network(run.config, usa.semi_space(run), "consistency")
    net.start_teacher()
    before = {k: v.clone() for k, v in net.teacher.state_dict().items()}
    with torch.no_grad():
        for p in net.segmenter.parameters():
            p.add_(1.0)
    net.train()
    net.update_teacher(0.75)
    after = net.teacher.state_dict()
    student = net.segmenter.state_dict()
    name = next(k for k, v in before.items() if k.endswith("weight") and v.dtype.is_floating_point)
    assert torch.allclose(after[name], 0.75 * before[name] + 0.25 * student[name])
    assert not net.teacher.training  # eval mode whatever the student's mode
    # the step's targets come from the teacher: a teacher that predicts one class everywhere with
    # full confidence makes every valid weak pixel count
    with torch.no_grad():
        head = net.teacher.head
        head.weight.zero_()
        head.bias.copy_(torch.tensor([50.0] + [0.0] * (head.bias.numel() - 1)))
    step = usa.semi_step(run.config.unisemalign.model_copy(update={"teacher": "mean", "teacher_momentum": 0.0}),
                         False, lambda: 1.0)
    batch = {"image": torch.rand(2, 3, 32, 32), "mask": torch.zeros(2, 32, 32, dtype=torch.long),
             "weak": torch.rand(2, 3, 32, 32), "strong": torch.rand(2, 3, 32, 32),
             "box": torch.zeros(2, 32, 32, dtype=torch.bool)}
    net.update_teacher = lambda momentum: None  # keep the rigged teacher for this step
    losses = step(net, batch)
    assert losses["mask_ratio"].item() == pytest.approx(1.0)



@pytest.mark.parametrize("scores, teacher_is_last", [((0.5, 0.4, 0.9), True), ((0.5, 0.4, 0.45), False)])
def test_validated_teacher_is_refreshed_only_when_validation_improves(tiny_data, tmp_path, monkeypatch, scores,
                                                                      teacher_is_last):
    import tissueseg.methods.unisemalign as usa

    run = make_run(tiny_data, tmp_path, train={"epochs": 2, "max_steps_per_epoch": 1})
    supervised = usa.train_row(run, "supervised").state_dict()
    given = iter(scores)  # the warm start, epoch 1, epoch 2
    monkeypatch.setattr(usa, "evaluate_segmenter", lambda *a, **k: {
        "mdice": next(given), "mjaccard": 0.0, "dice_fg": 0.0, "jaccard_fg": 0.0})
    usa.train_row(run, "consistency", settings=run.config.unisemalign.model_copy(update={"teacher": "validated"}))
    last = torch.load(tmp_path / "checkpoints" / "consistency_last.pt", weights_only=False)["model"]
    teacher = {k[len("teacher."):]: v for k, v in last.items() if k.startswith("teacher.")}
    student = {k[len("segmenter."):]: v for k, v in last.items() if k.startswith("segmenter.")}
    assert teacher.keys() == student.keys() == supervised.keys()
    weights = [k for k in teacher if teacher[k].dtype.is_floating_point and k.endswith("weight")]
    assert all(torch.equal(teacher[k], student[k]) for k in weights) == teacher_is_last
    # never beaten: the teacher is still the validated warm start
    assert all(torch.equal(teacher[k].cpu(), supervised[k].cpu()) for k in weights) != teacher_is_last


def test_prediction_balanced_weights_hand_computed():
    from tissueseg.methods.unisemalign import prediction_balanced_weights

    label = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    keep = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    valid = torch.ones_like(keep)
    # class 0: predicted 3/8, kept 3/4 -> 0.5; class 1: predicted 5/8, kept 1/4 -> 2.5; total stays 4
    w = prediction_balanced_weights(label, keep, valid, 2)
    assert torch.allclose(w, torch.tensor([[0.5, 0.5, 0.5, 2.5, 0, 0, 0, 0]]))
    # an invalid pixel does not count as predicted; the cap bounds a class that is rarely kept
    valid[0, 7] = False
    keep = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 1]], dtype=torch.bool) & valid
    w = prediction_balanced_weights(label, keep, valid, 2, max_ratio=5.0)
    assert torch.allclose(w, torch.tensor([[3 / 7, 3 / 7, 3 / 7, 0, 0, 0, 0, 0]]))
    w = prediction_balanced_weights(label, torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool), valid, 2,
                                    max_ratio=1.5)
    assert w[0, 3].item() == pytest.approx(1.5)
