"""Train a segmentation network: ``python train.py loss=bce_dice`` (see README, conf/train.yaml).

Thin on purpose: Hydra composes ``conf/train.yaml`` with the command-line overrides, and
:func:`segtrain.run.train` does the work. Returns the monitored metric (for sweeps).
"""

import sys

import hydra
from omegaconf import DictConfig

from segtrain.distributed import startup_argv
from segtrain.errors import readable_errors
from segtrain.run import train
from segtrain.run_log import record_failed_run
from segtrain.sweep import sweep_safe


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    # A failed job is recorded (failure.yaml); inside a multirun it reports the worst value (segtrain/sweep.py).
    # A single run's data or config error prints its message, its traceback goes to train.log (segtrain/errors.py).
    with readable_errors():
        return sweep_safe(record_failed_run(train), cfg)


if __name__ == "__main__":
    # DDP ranks started by Lightning, torchrun or srun: one run folder, the right job (segtrain/distributed.py).
    sys.argv = startup_argv(sys.argv)
    main()
