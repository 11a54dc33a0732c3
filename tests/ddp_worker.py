"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo): the DDP pieces on real ranks.

Each rank writes what it saw to ``<out>/rank<r>.json``; the test reads and checks both files.
"""

import copy
import json
import sys
from pathlib import Path

import torch
from torch import nn

from diffedu.distributed import check_same_on_all_ranks, init_distributed, rank_and_world, row_sharded_ddp
from diffedu.pretrained import register_checkpoint


class Probe(nn.Module):
    """net(x, t) = Linear(x) * t, recording the batch sizes it is called with."""

    prediction = "eps"

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        return self.linear(x) * t[:, None]


def main(out: Path) -> None:
    device = init_distributed("cpu")
    rank, world = rank_and_world()
    report: dict = {"rank": rank, "world": world, "device": str(device)}

    # the same global batch on every rank; the net sees this rank's rows; the gradient is the global batch's
    torch.manual_seed(0)
    probe = Probe()
    reference = copy.deepcopy(probe)
    g = torch.Generator().manual_seed(1)
    x, t, target = torch.randn(8, 3, generator=g), torch.rand(8, generator=g), torch.randn(8, 3, generator=g)
    net = row_sharded_ddp(probe, device, batch_size=8)
    out_dist = net(x, t)
    ((out_dist - target) ** 2).mean().backward()
    out_ref = reference(x, t)
    ((out_ref - target) ** 2).mean().backward()
    report["seen"] = probe.seen
    report["prediction"] = net.prediction
    report["output_error"] = float((out_dist - out_ref).detach().abs().max())
    report["grad_error"] = max(float((p.grad - q.grad).abs().max())
                               for p, q in zip(probe.parameters(), reference.parameters()))
    report["grad_scale"] = float(reference.linear.weight.grad.abs().max())

    check_same_on_all_ranks("a value", {"same": 1})  # agrees: no error
    try:
        check_same_on_all_ranks("the config", {"lr": 1e-3 * (1 + rank)})
        report["mismatch"] = None
    except ValueError as err:
        report["mismatch"] = str(err)
    try:
        register_checkpoint("probe", probe, recipe="r", command="c", train_config={}, seed=0, steps=1,
                            wall_time_s=0.0, metric=("m", 0.0), config={"name": "Probe"},
                            directory=str(out / f"ckpt{rank}"))
        report["register"] = "written"
    except ValueError as err:
        report["register"] = str(err)
    (out / f"rank{rank}.json").write_text(json.dumps(report), encoding="utf-8")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
