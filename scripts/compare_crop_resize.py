"""Original-size Dice of crop training vs resize training on thin-structure data, at equal training time.

    PYTHONPATH=. python scripts/compare_crop_resize.py [seconds=60] [crop=128] [resize=128] [out=/tmp/crop_vs_resize]

Generates a folder of odd-sized images with 1-3 px branching lines (datamodules/thin.py), trains
``data=folder`` twice for the same wall time (``trainer.max_time``): at native resolution on
random crops, and resized to ``resize`` x ``resize``; then predicts every validation image with
each checkpoint exactly as scripts/predict.py does and scores the masks at the original size.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    p, t = pred > 0, target > 0
    return float(2 * (p & t).sum() / max(1, p.sum() + t.sum()))


def main(argv: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    from datamodules.thin import write_thin_dataset
    from segtrain.inference import load_inference_model, predict_images
    from segtrain.run import train

    opts = dict(a.split("=", 1) for a in argv)
    seconds, crop, resize = int(opts.get("seconds", 60)), int(opts.get("crop", 128)), int(opts.get("resize", 128))
    out = Path(opts.get("out", "/tmp/crop_vs_resize"))
    rng = np.random.default_rng(0)
    sizes = [(int(rng.integers(280, 460)), int(rng.integers(280, 460))) for _ in range(30)]
    root = write_thin_dataset(out / "data", sizes[:24], seed=1, split="train")
    write_thin_dataset(out / "data", sizes[24:], seed=2, split="val")
    common = ["data=folder", f"data.root={root}", "ignore_index=255", "data.num_workers=2", "data.batch_size=8",
              "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_epochs=1000",
              f'+trainer.max_time="00:00:{seconds // 60:02d}:{seconds % 60:02d}"', "callbacks.early_stopping=null",
              "trainer.enable_model_summary=false", "model.encoder_weights=null"]
    variants = {"crop": [f"data.crop_size={crop}"], "resize": [f"data.image_size={resize}"]}
    conf = str(Path(__file__).resolve().parents[1] / "conf")
    val = sorted((root / "val" / "images").glob("*.png"))
    for name, extra in variants.items():
        run = out / f"run_{name}"
        with initialize_config_dir(config_dir=conf, version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*common, *extra, f"paths.output_dir={run}"])
        train(cfg)
        model = load_inference_model(run / "checkpoints" / "last.ckpt")
        scores = []
        for path in val:
            image = np.array(Image.open(path).convert("RGB"))
            target = np.array(Image.open(root / "val" / "masks" / path.name))
            (mask,) = predict_images(model, [image])
            assert mask.shape == target.shape
            scores.append(dice(mask, target))
        print(f"RESULT {name}: original-size Dice {np.mean(scores):.4f} over {len(val)} images ({seconds} s training)")


if __name__ == "__main__":
    main(sys.argv[1:])
