"""DDP under torchrun on CPU (gloo): two ranks train a toy model with the shared Trainer and must match one
process with the same global batch; only rank 0 writes checkpoints and the log."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    import tissueseg.engine.trainer as trainer_module
    from tissueseg.engine import distributed as dist_utils
    from tissueseg.engine.trainer import TrainConfig, Trainer

    torch.set_num_threads(1)
    out, batch_size = Path(sys.argv[1]), int(sys.argv[2])
    writes = []
    real_save = trainer_module.save_atomic

    def spy_save(obj, path):
        writes.append(Path(path).name)
        real_save(obj, path)

    trainer_module.save_atomic = spy_save

    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=g)
    data = TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1)

    def collate(items):
        return {"x": torch.stack([i[0] for i in items]), "y": torch.stack([i[1] for i in items])}

    def step(model, batch):
        return {"loss": ((model(batch["x"]).squeeze(1) - batch["y"]) ** 2).mean()}

    torch.manual_seed(0)
    cfg = TrainConfig(epochs=3, batch_size=batch_size, lr=0.05, optimizer="sgd", weight_decay=0.0,
                      channels_last=False, seed=0, log_every=1)
    trainer = Trainer(nn.Linear(4, 1), cfg, out, name="toy")
    result = trainer.fit(data, step, collate_fn=collate)
    weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()]).tolist()
    (out / f"rank{dist_utils.rank()}.json").write_text(json.dumps({
        "rank": dist_utils.rank(), "world": dist_utils.world_size(), "ddp": dist_utils.is_distributed(),
        "weights": weights, "result": result, "writes": writes}))
''')


def run_toy(script, out, batch_size, env, ranks=None):
    """Train the toy script: under torchrun with ``ranks`` processes, or as one plain process."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] if ranks else []
    proc = subprocess.run([sys.executable, *launcher, str(script), str(out), str(batch_size)],
                          env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.timeout(120)
def test_two_rank_ddp_matches_single_process_with_the_same_global_batch(tmp_path):
    script = tmp_path / "train_toy.py"
    script.write_text(SCRIPT)
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    run_toy(script, out, 4, env, ranks=2)  # 2 ranks × 4 = global batch 8

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 and r["ddp"] for r in ranks)
    # rank 0 alone writes checkpoints and the log
    assert ranks[1]["writes"] == []
    assert {"toy_last.pt", "toy_best.pt"} <= set(ranks[0]["writes"])
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "epoch" for e in events) == 3 and sum(e["event"] == "step" for e in events) == 3 * 4

    run_toy(script, tmp_path / "single", 8, env)  # the same script as one process with batch 8
    single = json.loads((tmp_path / "single" / "rank0.json").read_text())
    assert not single["ddp"]
    reference, ref_result = torch.tensor(single["weights"]), single["result"]
    for r in ranks:  # both replicas hold the same model, equal to one process with batch 8
        assert torch.allclose(torch.tensor(r["weights"]), reference, atol=1e-5), (r["weights"], reference)
    # synced metrics: the logged epoch loss is the global mean, as in the single process
    assert ranks[0]["result"]["train_loss"] == pytest.approx(ref_result["train_loss"], rel=1e-4)
    assert ranks[1]["result"]["train_loss"] == pytest.approx(ref_result["train_loss"], rel=1e-4)
    ddp_steps = [e["loss"] for e in events if e["event"] == "step"]
    ref_steps = [json.loads(line)["loss"] for line in (tmp_path / "single" / "log.jsonl").read_text().splitlines()
                 if json.loads(line)["event"] == "step"]
    assert ddp_steps == pytest.approx(ref_steps, rel=1e-4)
    state = torch.load(out / "checkpoints" / "toy_last.pt", weights_only=False)
    assert state["epoch"] == 3 and state["global_step"] == 12
