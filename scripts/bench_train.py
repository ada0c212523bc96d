"""Training-step throughput of the harness against a plain PyTorch loop, side by side in one run.

    python scripts/bench_train.py                       # default config (binary, bce_dice, 64 px)
    python scripts/bench_train.py loss=dice_focal data.batch_size=32 trainer.precision=bf16-mixed
    python scripts/bench_train.py --quick               # seconds; what the test runs
    python scripts/bench_train.py --data live data.num_workers=2 data.persistent_workers=true

Both sides use the same composed config (Hydra overrides as arguments): the same network
(the plain loop trains an exact copy of the harness's initial weights), the same combined loss
object, the same optimizer config, the same batches and batch size, and the same device and
precision (autocast bf16/fp16, a GradScaler for 16-mixed). The harness side is the real thing:
``SegmentationModule`` and a ``Trainer`` with the config's callbacks and logger (validation
off: this measures training steps). The plain side is ``for batch: zero_grad; forward; loss;
backward; step``.

Measurement: ``--rounds`` rounds, alternating which side goes first (ABBA ...), each side
running ``--warmup`` untimed steps then ``--steps`` timed steps; the harness is timed from its
first timed ``on_train_batch_start`` to its last ``on_train_batch_end`` (Trainer set-up and
teardown, paid once per run, are left out), the plain loop over the same span. Reported:
median images/s of each side (wall clock) and the harness overhead ``plain/harness - 1``; on a
CPU also the overhead by CPU time per step, which other processes on the machine do not skew.

Data: ``--data cached`` (default) pre-loads ``--cache-batches`` batches from the config's
datamodule and feeds both sides from memory, so the data pipeline cannot be the bottleneck and
the comparison isolates the harness. ``--data live`` feeds both from the datamodule's own
DataLoader (set ``data.num_workers``, ``data.pin_memory``, ``data.persistent_workers``); the
loader's own throughput is printed too, so you can see whether it keeps up.

Threads: PyTorch's default intra-op thread count (all cores); ``--threads N`` sets it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

QUICK_OVERRIDES = [
    "data.num_samples=24",
    "data.image_size=32",
    "data.batch_size=4",
    "data.num_workers=0",
]


class _Batches:
    """An iterable of ready batches with a length, cycled to ``n`` items (a DataLoader stand-in)."""

    def __init__(self, batches: list[Any], n: int) -> None:
        self.batches, self.n = batches, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return (self.batches[i % len(self.batches)] for i in range(self.n))


def _cycle(loader, n: int):
    """``n`` batches from ``loader``, starting new epochs of it as needed."""
    count = 0
    while count < n:
        for batch in loader:
            if count >= n:
                return
            yield batch
            count += 1


def _device(trainer) -> torch.device:
    return trainer.strategy.root_device


def _autocast(device: torch.device, precision: str):
    if precision in ("bf16-mixed", "bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision in ("16-mixed", "16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def _to(batch: dict, device: torch.device, non_blocking: bool) -> dict:
    return {k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _now() -> tuple[float, float]:
    """(wall clock, this process's CPU time): the second is robust when others share the cores."""
    return time.perf_counter(), time.process_time()


def _per_step(start: tuple[float, float], end: tuple[float, float], steps: int) -> tuple[float, float]:
    return (end[0] - start[0]) / steps, (end[1] - start[1]) / steps


def plain_loop(net, loss_fn, optimizer, batches, device, precision, warmup: int, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step of a plain PyTorch training loop over ``batches`` (``warmup`` steps untimed)."""
    scaler = torch.amp.GradScaler(device.type) if precision in ("16-mixed", "16") else None
    net.train()
    start = None
    for i, batch in enumerate(batches):
        if i == warmup:
            _sync(device)
            start = _now()
        batch = _to(batch, device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            loss = loss_fn(net(batch["image"]), batch["mask"])
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
    _sync(device)
    return _per_step(start, _now(), steps)


def _step_timer(warmup: int, steps: int):
    """A Lightning callback timing train steps ``warmup .. warmup+steps-1`` (first start to last end)."""
    import lightning as L

    class StepTimer(L.Callback):
        # Counts steps itself: batch_idx restarts at every epoch (live data may span several).
        def __init__(self) -> None:
            self.start = self.end = None
            self.started = self.ended = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.started == warmup:
                _sync(pl_module.device)
                self.start = _now()
            self.started += 1

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ended += 1
            if self.ended == warmup + steps:
                _sync(pl_module.device)
                self.end = _now()

        def seconds_per_step(self) -> tuple[float, float]:
            return _per_step(self.start, self.end, steps)

    return StepTimer()


def compose(overrides: list[str]):
    """The training config, composed as ``train.py`` would with these overrides."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few steps (seconds)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per side per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per side per round")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (ABBA...)")
    parser.add_argument("--data", choices=("cached", "live"), default="cached")
    parser.add_argument("--cache-batches", type=int, default=8, help="distinct batches in cached mode")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="folder for the harness's logs/checkpoints (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.rounds, args.cache_batches = 4, 2, 2, 2
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)

    import tempfile

    import hydra
    import lightning as L
    from omegaconf import OmegaConf, open_dict

    from segtrain import run as harness

    import logging

    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # no banners every round
    try:
        tmp = tempfile.TemporaryDirectory(prefix="bench_train_")
        output_dir = str(args.output_dir or tmp.name)
        overrides = (QUICK_OVERRIDES if args.quick else []) + list(args.overrides) + [f"paths.output_dir={output_dir}"]
        cfg = compose(overrides)
        L.seed_everything(int(cfg.get("seed", 0) or 0), workers=True, verbose=False)

        datamodule = hydra.utils.instantiate(cfg.data)
        datamodule.setup("fit")
        n_steps = args.warmup + args.steps
        if args.data == "cached":
            cache = list(_cycle(datamodule.train_dataloader(), args.cache_batches))
            make_batches = lambda: _Batches(cache, n_steps)  # noqa: E731
        else:
            make_batches = lambda: _cycle(datamodule.train_dataloader(), n_steps)  # noqa: E731
        batch_size = int(next(iter(make_batches()))["image"].shape[0])

        module = harness.build_module(cfg)
        net0 = copy.deepcopy(module.net.state_dict())
        # Plain side: an exact copy of the initial network, the same loss object, optimizer from config.
        plain_net = copy.deepcopy(module.net)
        plain_loss = module.loss
        # The config's callbacks and loggers, minus the ones that only act on validation / epoch ends
        # (nothing of theirs runs inside the timed steps, and without validation they would complain).
        skip = {"model_checkpoint", "early_stopping", "prediction_grid"}
        callbacks_cfg = {k: v for k, v in (cfg.get("callbacks") or {}).items() if k not in skip}
        device_holder = {}

        def harness_round() -> tuple[float, float]:
            module.net.load_state_dict(net0)
            timer = _step_timer(args.warmup, args.steps)
            trainer = hydra.utils.instantiate(
                cfg.trainer,
                callbacks=[*harness._instantiate_dict(callbacks_cfg, "callbacks"), timer],
                logger=harness._instantiate_dict(cfg.get("logger"), "logger") or False,
                max_steps=n_steps, max_epochs=-1, limit_train_batches=n_steps, limit_val_batches=0,
                num_sanity_val_steps=0, enable_checkpointing=False, enable_model_summary=False,
            )
            if args.data == "cached":
                trainer.fit(module, train_dataloaders=make_batches())
            else:
                trainer.fit(module, datamodule=datamodule)
            device_holder["device"] = _device(trainer)
            return timer.seconds_per_step()

        def plain_round() -> tuple[float, float]:
            device = device_holder.get("device", torch.device("cuda" if _wants_cuda(cfg) else "cpu"))
            plain_net.load_state_dict(net0)
            plain_net.to(device)
            plain_loss.to(device)
            optimizer = hydra.utils.instantiate(cfg.optimizer)(params=plain_net.parameters())
            return plain_loop(plain_net, plain_loss, optimizer, make_batches(), device,
                              str(cfg.trainer.get("precision", "32-true")), args.warmup, args.steps)

        loader_ips = None
        if args.data == "live":
            start = time.perf_counter()
            n = sum(1 for _ in _cycle(datamodule.train_dataloader(), n_steps))
            loader_ips = n * batch_size / (time.perf_counter() - start)

        plain_t, harness_t = [], []
        harness_round()  # untimed: first-call costs (lazy inits, allocator warm-up) on neither side's clock
        for r in range(args.rounds):
            order = (plain_round, harness_round) if r % 2 == 0 else (harness_round, plain_round)
            for fn in order:
                (plain_t if fn is plain_round else harness_t).append(fn())

        plain_ips = batch_size / statistics.median(t for t, _ in plain_t)
        harness_ips = batch_size / statistics.median(t for t, _ in harness_t)
        overhead = (plain_ips / harness_ips - 1.0) * 100.0
        # CPU time per step: on a CPU device, the work each side does, whatever else runs on the machine.
        overhead_cpu = (statistics.median(c for _, c in harness_t) / statistics.median(c for _, c in plain_t) - 1.0) * 100.0
        result = {
            "device": str(device_holder["device"]),
            "precision": str(cfg.trainer.get("precision", "32-true")),
            "batch_size": batch_size,
            "image_size": list(next(iter(make_batches()))["image"].shape[-2:]),
            "loss": list(cfg.loss.terms.keys()) if "terms" in cfg.loss else str(cfg.loss),
            "data": args.data,
            "threads": torch.get_num_threads(),
            "steps_per_round": args.steps,
            "rounds": args.rounds,
            "plain_images_per_s": plain_ips,
            "harness_images_per_s": harness_ips,
            "overhead_percent": overhead,
            "overhead_cpu_time_percent": overhead_cpu,
            "plain_rounds_s_per_step": [t for t, _ in plain_t],
            "harness_rounds_s_per_step": [t for t, _ in harness_t],
            "plain_rounds_cpu_s_per_step": [c for _, c in plain_t],
            "harness_rounds_cpu_s_per_step": [c for _, c in harness_t],
            "loader_images_per_s": loader_ips,
        }
        print(f"device {result['device']}  precision {result['precision']}  batch {batch_size}  "
              f"image {tuple(result['image_size'])}  data {args.data}  threads {result['threads']}")
        print(f"plain PyTorch loop : {plain_ips:9.1f} images/s")
        print(f"harness (Lightning): {harness_ips:9.1f} images/s")
        if loader_ips is not None:
            print(f"data loader alone  : {loader_ips:9.1f} images/s")
        print(f"harness overhead   : {overhead:+.1f} %  (target <= 5 %)")
        if result["device"] == "cpu":
            print(f"  by CPU time/step : {overhead_cpu:+.1f} %  (robust to other load on the machine)")
        if args.out:
            args.out.write_text(json.dumps(result, indent=2))
        tmp.cleanup()
        return result
    finally:
        # main() also runs in-process (tests, gpu_check): leave the caller's logging and threads as they were.
        lightning_log.setLevel(level)
        torch.set_num_threads(threads)


def _wants_cuda(cfg) -> bool:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    return torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")


if __name__ == "__main__":
    main()
