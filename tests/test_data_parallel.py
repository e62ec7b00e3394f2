"""Data parallelism over two real gloo processes: shares pair up, gradients are averaged, and
the workers' weights stay identical through training."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from learner.data_parallel import Shard
from learner.training_loop import TrainingCurve, shuffled_batches, train_epochs


def test_shares_pair_up_one_to_one() -> None:
    items = list(range(5))
    assert Shard(0, 2).take(items) == [0, 2] and Shard(1, 2).take(items) == [1, 3]
    assert Shard(0, 2).take([7]) == [7] == Shard(1, 2).take([7])  # nobody is left without
    assert Shard(0, 1).take(items) == items and Shard(1, 2).take([]) == []
    assert Shard(1, 3).share_of(64) == 22


def worker(rank: int, out: str) -> None:
    torch.set_num_threads(1)
    # A file rendezvous: no port to race for.
    rendezvous = f"file://{out}/rendezvous"
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    shard = Shard(rank, 2)
    # Each worker's own loss: the averaged gradient is the mean of the two workers' gradients.
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ((w * torch.tensor([float(rank + 1), 3.0])).sum() ** 2).backward()
    shard.average_gradients([w])
    averaged = w.grad.tolist()

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)  # same start on both workers (same seed)
    target = torch.tensor([0.5, -1.0, 2.0])
    inputs = torch.randn(40, 3, generator=torch.Generator().manual_seed(100))  # same data on both
    data = [(x, float(x @ target)) for x in inputs]

    def loss_terms(batch: list) -> dict[str, torch.Tensor]:
        x = torch.stack([b[0] for b in batch])
        y = torch.tensor([b[1] for b in batch])
        return {"mse": ((model(x).squeeze(-1) - y) ** 2).mean()}

    curve = TrainingCurve()
    batches = lambda r: shuffled_batches(data, 8, r)  # noqa: E731
    train_epochs(list(model.parameters()), 30, 0.05, batches, loss_terms, curve, 0, shard=shard)
    result = {
        "averaged": averaged,
        "weights": [p.detach().flatten().tolist() for p in model.parameters()],
        "curve": curve.epochs["mse"],
        "mean": shard.mean({"x": float(rank)}),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    # Cyclic garbage holding tensors, freed only at interpreter exit after the process group
    # is gone, aborts the process about one run in five (gloo); free it while the group lives.
    gc.collect()
    dist.destroy_process_group()


def test_two_gloo_workers_average_gradients_and_stay_identical(tmp_path: Path) -> None:
    mp.spawn(worker, args=(str(tmp_path),), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # d/dw (a.w)^2 = 2 (a.w) a: rank 0, a = (1, 3), a.w = 7; rank 1, a = (2, 3), a.w = 8
    expected = [(2 * 7 * 1 + 2 * 8 * 2) / 2, (2 * 7 * 3 + 2 * 8 * 3) / 2]
    assert r0["averaged"] == expected == r1["averaged"]
    assert r0["weights"] == r1["weights"]  # the workers never drift apart
    assert r0["curve"] == r1["curve"]  # logged means are over both workers
    assert r0["curve"][-1] < 0.05 * r0["curve"][0]
    assert r0["mean"] == {"x": 0.5}
