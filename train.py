"""Train a segmentation network: ``python train.py loss=bce_dice`` (see README, conf/train.yaml).

Thin on purpose: Hydra composes ``conf/train.yaml`` with the command-line overrides, and
:func:`segtrain.run.train` does the work. Returns the monitored metric (for sweeps).
"""

import hydra
from omegaconf import DictConfig

from segtrain.run import train


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
