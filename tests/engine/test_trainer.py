import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tissueseg.engine.trainer import CheckpointWriter, NonFiniteLossError, TrainConfig, Trainer, poly_lr


def make_data(n=32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
    return TensorDataset(x, y)


def collate(items):
    return {"x": torch.stack([i[0] for i in items]), "y": torch.stack([i[1] for i in items])}


def regression_step(model, batch):
    pred = model(batch["x"]).squeeze(1)
    return {"loss": ((pred - batch["y"]) ** 2).mean()}


def make_trainer(tmp_path, epochs, log_every=1, **kw):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=0.05, optimizer="sgd", weight_decay=0.0,
                      channels_last=False, seed=0, log_every=log_every, **kw)
    return Trainer(nn.Linear(4, 1), cfg, tmp_path, name="toy")


def weights(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def test_fit_learns_and_writes_log_and_checkpoints(tmp_path):
    trainer = make_trainer(tmp_path, epochs=6)
    before = regression_step(trainer.model, collate(list(make_data())))["loss"].item()
    result = trainer.fit(make_data(), regression_step, collate_fn=collate)
    after = regression_step(trainer.model, collate(list(make_data())))["loss"].item()
    assert after < 0.2 * before
    assert result["epoch"] == 6 and "train_loss" in result
    assert (tmp_path / "checkpoints" / "toy_last.pt").exists()
    assert (tmp_path / "checkpoints" / "toy_best.pt").exists()
    events = [json.loads(line)["event"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert events.count("epoch") == 6 and events.count("step") == 6 * 4


def test_resume_after_epoch_and_mid_epoch_interrupt_matches_uninterrupted(tmp_path):
    straight = make_trainer(tmp_path / "a", epochs=3)
    straight.fit(make_data(), regression_step, collate_fn=collate)

    calls = {"n": 0}

    def interrupted_step(model, batch):
        calls["n"] += 1
        if calls["n"] == 6:  # second batch of epoch 2
            raise KeyboardInterrupt
        return regression_step(model, batch)

    first = make_trainer(tmp_path / "b", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        first.fit(make_data(), interrupted_step, collate_fn=collate)
    state = torch.load(tmp_path / "b" / "checkpoints" / "toy_last.pt", weights_only=False)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1)
    second = make_trainer(tmp_path / "b", epochs=3)
    second.fit(make_data(), regression_step, collate_fn=collate)
    assert torch.allclose(weights(straight), weights(second), atol=1e-6)


@pytest.mark.parametrize("log_every", [1, 3])  # 3: the NaN step is read two steps late, still before a checkpoint
def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, log_every):
    calls = {"n": 0}

    def exploding_step(model, batch):
        calls["n"] += 1
        losses = regression_step(model, batch)
        if calls["n"] > 4:  # epoch 2
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    trainer = make_trainer(tmp_path, epochs=3, log_every=log_every)
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 0; the last good checkpoint"):
        trainer.fit(make_data(), exploding_step, collate_fn=collate)
    state = torch.load(tmp_path / "checkpoints" / "toy_last.pt", weights_only=False)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_checkpoint_writer_raises_a_failed_background_write(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    writer = CheckpointWriter()
    writer.write([({"x": torch.zeros(1)}, tmp_path / "file" / "ckpt.pt")])
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()  # the error is raised once


def test_gradient_accumulation_matches_full_batch(tmp_path):
    full = make_trainer(tmp_path / "full", epochs=1)
    full.fit(make_data(), regression_step, collate_fn=collate)
    accum = make_trainer(tmp_path / "accum", epochs=1, grad_accum=2)
    accum.fit(make_data(), regression_step, collate_fn=collate)
    assert torch.allclose(weights(full), weights(accum), atol=1e-5)


def test_best_checkpoint_follows_selected_metric(tmp_path):
    scores = iter([0.3, 0.9, 0.5])
    trainer = make_trainer(tmp_path, epochs=3)
    result = trainer.fit(make_data(), regression_step, evaluate=lambda m: {"miou": next(scores)},
                         collate_fn=collate)
    assert result["epoch"] == 2 and result["miou"] == 0.9
    best = torch.load(tmp_path / "checkpoints" / "toy_best.pt", weights_only=False)
    assert best["metrics"]["miou"] == 0.9


@pytest.mark.parametrize("start_score, best_epoch", [(0.95, 0), (0.4, 2)])
def test_evaluated_start_stays_best_until_an_epoch_beats_it(tmp_path, start_score, best_epoch):
    scores = iter([0.3, 0.9, 0.5])
    trainer = make_trainer(tmp_path, epochs=3)
    start = weights(trainer).clone()
    result = trainer.fit(make_data(), regression_step, evaluate=lambda m: {"miou": next(scores)},
                         collate_fn=collate, evaluate_start=lambda m: {"miou": start_score})
    assert result["epoch"] == best_epoch
    best = torch.load(tmp_path / "checkpoints" / "toy_best.pt", weights_only=False)
    assert best["metrics"]["epoch"] == best_epoch
    kept = torch.cat([v.flatten() for v in best["model"].values()])
    assert torch.equal(kept, start) == (best_epoch == 0)


def test_poly_lr_endpoints():
    assert poly_lr(0.01, 0, 100, 0.9) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100, 1.0) == pytest.approx(0.005)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0


def test_too_few_samples_for_a_batch_is_a_clear_error(tmp_path):
    trainer = make_trainer(tmp_path, epochs=1)
    with pytest.raises(ValueError, match="fewer than one batch"):
        trainer.fit(make_data(4), regression_step, collate_fn=collate)


def test_gradient_clipping_bounds_the_update(tmp_path):
    clipped = make_trainer(tmp_path / "c", epochs=1, grad_clip_norm=1e-3, max_steps_per_epoch=1)
    start = weights(clipped).clone()
    clipped.fit(make_data(), regression_step, collate_fn=collate)
    # one SGD step (momentum buffer starts at the gradient) moves the weights by at most lr * clip
    assert (weights(clipped) - start).norm().item() <= 0.05 * 1e-3 + 1e-7
