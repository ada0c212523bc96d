"""sync_dist=True: two CPU processes (gloo), each with half the batch, under real DDP, equal the
one-process loss and gradients on the whole batch."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seglosses import DiceLoss, JaccardLoss, TverskyLoss

from _loss_cases import IGNORE, make_case

WORLD = 2


def _cases():
    """(name, mode, loss factory, logits input, target) with a batch of 4 split 2 + 2."""
    out = []
    for mode in ("binary", "multiclass", "multilabel"):
        x, t = make_case(mode, (6, 6), batch=4, classes=3, ignore=True, dtype=torch.float64, seed=7)
        out.append((f"dice-{mode}", mode, lambda m=mode: DiceLoss(m, ignore_index=IGNORE, sync_dist=True), x, t))
    x, t = make_case("multiclass", (3, 4, 4), batch=4, classes=3, dtype=torch.float64, seed=8)
    t[2:][t[2:] == 2] = 1  # class 2 only in the first half of the batch: presence must be global
    out.append(("jaccard-3d", "multiclass", lambda: JaccardLoss("multiclass", sync_dist=True), x, t))
    x, t = make_case("multilabel", (6, 6), batch=4, classes=3, dtype=torch.float64, seed=9)
    out.append(("tversky-per-image", "multilabel",
                lambda: TverskyLoss("multilabel", 0.3, 0.7, 1.5, per_image=True, sync_dist=True), x, t))
    return out


def _net(channels: int, ndim: int) -> torch.nn.Module:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d if ndim == 4 else torch.nn.Conv3d
    return conv(channels, channels, 1).double()


def _worker(rank: int, port: int, out_dir: str):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {}
        for name, _mode, factory, x, t in _cases():
            net = torch.nn.parallel.DistributedDataParallel(_net(x.shape[1], x.ndim))
            half = slice(2 * rank, 2 * rank + 2)
            xin = x[half].clone().requires_grad_()  # the "image" fed to the network
            loss = factory()(net(xin), t[half])
            loss.backward()  # DDP all-reduces (averages) the parameter gradients here
            results[name] = {
                "loss": loss.detach(),
                "grads": [p.grad.clone() for p in net.parameters()],
                "input_grad": xin.grad.clone(),
            }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sync_dist_equals_global_batch_under_ddp(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name, _mode, factory, x, t in _cases():
        net = _net(x.shape[1], x.ndim)
        xin = x.clone().requires_grad_()
        fn = factory()
        fn.sync_dist = False  # one process, whole batch: the reference
        loss = fn(net(xin), t)
        loss.backward()
        for r in range(WORLD):
            got = ranks[r][name]
            torch.testing.assert_close(got["loss"], loss.detach(), msg=f"{name} loss rank {r}")
            for g_ddp, p in zip(got["grads"], net.parameters()):
                torch.testing.assert_close(g_ddp, p.grad, msg=f"{name} DDP-averaged grad rank {r}")
            # before DDP's averaging each rank's gradient is WORLD x the global one (see distributed.py)
            half = slice(2 * r, 2 * r + 2)
            torch.testing.assert_close(got["input_grad"], WORLD * xin.grad[half], msg=f"{name} input grad")
    # the per-rank (unsynced) loss is a different quantity: the test would notice a no-op sync
    name, _mode, factory, x, t = _cases()[3]
    fn = factory()
    fn.sync_dist = False
    assert not torch.allclose(fn(_net(x.shape[1], x.ndim)(x[:2]), t[:2]), ranks[0][name]["loss"])
