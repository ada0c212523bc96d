"""Download a model's pretrained encoder weights into the local cache, for a machine without internet.

    python scripts/fetch_weights.py model=unet_resnet34            # imagenet when the config says null
    python scripts/fetch_weights.py model=unet model.encoder_name=tu-convnext_tiny

Run it where there is internet (a cluster's login node) with the same ``HF_HOME`` / ``TORCH_HOME``
as the machine that trains (a shared filesystem): it composes ``conf/train.yaml`` with the given
overrides, builds the network with ``model.encoder_weights`` (``imagenet`` when null), which
makes smp/timm download the weights into the Hugging Face hub cache (``$HF_HOME/hub``) or
torch.hub's (``$TORCH_HOME/hub/checkpoints``), and prints where they went and the variables to
export on the compute node. Training there then reads the cache without touching the network
(segtrain/encoder_weights.py). Arguments are Hydra overrides of conf/train.yaml.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(overrides: list[str]) -> int:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from segtrain.encoder_weights import cache_dirs, cached_hub_files, is_cached, is_weights_path
    from segtrain.network import build_network

    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("_target_", None)
    weights = model.get("encoder_weights") or "imagenet"
    if is_weights_path(weights):
        print(f"model.encoder_weights={weights} is a local file: nothing to download.")
        return 0
    model.update(encoder_weights=weights, in_channels=3)
    name = model["encoder_name"]
    print(f"Fetching {weights} weights of {name} ...")
    try:
        build_network(**model)
    except ValueError as err:  # no connection here either: the message says what to do
        print(f"Error: {err}", file=sys.stderr)
        return 1
    dirs = cache_dirs()
    files = cached_hub_files(name, weights)
    where = dirs["HF_HUB_CACHE"] if files and is_cached(name, weights) else os.path.join(dirs["TORCH_HOME"], "checkpoints")
    print(f"The weights are in {where}.")
    print("On the machine that trains (it must read this folder), before python train.py:")
    print(f"    export HF_HOME={dirs['HF_HOME']}")
    print(f"    export TORCH_HOME={os.path.dirname(dirs['TORCH_HOME'])}")
    print(f"and train with model.encoder_name={name} model.encoder_weights={weights}.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
