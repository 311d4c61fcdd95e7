"""Data-parallel UniversalSAM: two gloo ranks under DistributedDataParallel, each with half of
the batch, make the single-process step on the whole batch (ground truth: the same optimizer
in one process), and stay identical; without synchronization they do not (the control)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from metasam import UniversalSAM, presets

WORLD = 2
STEPS = 3
SPECS = {"frob_sam": lambda: presets.frob_sam(lam=0.5), "det_sam": lambda: presets.det_sam(),
         "ssam": lambda: presets.ssam()}


def model_() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(),
                               torch.nn.Linear(12, 3)).double()


def batch(k: int, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(k)
    return (torch.randn(n, 6, generator=gen, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=gen))


def part(xy: tuple[torch.Tensor, torch.Tensor], rank: int, world: int):
    size = xy[0].shape[0] // world
    return tuple(t[rank * size:(rank + 1) * size] for t in xy)


def run(name: str, net: torch.nn.Module, rank: int, world: int, **kwargs) -> UniversalSAM:
    opt = UniversalSAM(net.parameters(), torch.optim.SGD, SPECS[name](), model=net, lr=0.1,
                       momentum=0.9, **kwargs)
    if name == "ssam":
        opt.update_fisher_mask(net, F.cross_entropy, *part(batch(99, 16), rank, world))
    for k in range(STEPS):
        x, y = part(batch(k), rank, world)

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            return loss
        opt.step(closure)
    return opt


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    out = {}
    for name in SPECS:
        for mode, group in (("sync", "auto"), ("control", None)):
            model = model_()
            torch.manual_seed(1000 + rank)  # rank-dependent global RNG: seeds must be agreed on
            opt = run(name, DistributedDataParallel(model), rank, WORLD, process_group=group)
            out[name, mode] = {"seed": opt.seed,
                               "params": [p.detach().clone() for p in model.parameters()]}
    torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_ranks_make_the_single_process_step_of_the_whole_batch(tmp_path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name in SPECS:
        synced = [r[name, "sync"] for r in ranks]
        assert synced[0]["seed"] == synced[1]["seed"]
        model = model_()
        run(name, model, 0, 1, seed=synced[0]["seed"], process_group=None)
        reference = [p.detach() for p in model.parameters()]
        initial = [p.detach() for p in model_().parameters()]
        moved = max(float((a - b).abs().max()) for a, b in zip(reference, initial, strict=True))
        assert moved > 1e-3  # the steps did something
        for r in synced:
            for a, b in zip(r["params"], reference, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)

        # control: without synchronization the result is not the whole-batch step
        control = [r[name, "control"] for r in ranks]
        assert control[0]["seed"] != control[1]["seed"]
        off = max(float((a - b).abs().max()) for a, b in zip(control[0]["params"], reference,
                                                              strict=True))
        assert off > 1e-6, f"{name}: the unsynchronized control matched the reference"
        if name != "ssam":  # an ascent step uses only the averaged g_1: ranks still agree
            apart = max(float((a - b).abs().max()) for a, b in
                        zip(control[0]["params"], control[1]["params"], strict=True))
            assert apart > 1e-6, f"{name}: unsynchronized ranks did not drift apart"
