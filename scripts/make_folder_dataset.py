"""Write the synthetic shapes dataset to disk as images/ + masks/, for trying data=folder.

    python scripts/make_folder_dataset.py data/generated/shapes
    python train.py data=folder data.root=data/generated/shapes data.image_size=128 loss=bce_dice

    # multiclass with RGB colour masks (then pass the printed palette):
    python scripts/make_folder_dataset.py data/generated/mc --task multiclass --num-classes 4 \
        --mask-format palette_rgb
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from datamodules.masks import TASKS, class_palette  # noqa: E402
from datamodules.write import MASK_FORMATS, write_folder_dataset  # noqa: E402
from segtrain.task import SUGGESTED_LOSS  # noqa: E402


def root_override(root: Path | str) -> str:
    """``data.root=<root>`` as one shell word; Hydra's quoting where the path has spaces or other characters."""
    text = str(root)
    if re.fullmatch(r"[\w./@+-]+", text, flags=re.ASCII):
        return f"data.root={text}"
    return shlex.quote(f'data.root="{text}"')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="target folder")
    parser.add_argument("--task", default="binary", choices=TASKS)
    parser.add_argument("--num-classes", type=int, default=1)
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", default="ratio", choices=["ratio", "split"],
                        help="ratio: out/images + out/masks; split: out/train/... + out/val/...")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share in val/ with --layout split")
    parser.add_argument("--image-format", default="png", choices=["png", "jpg", "tif"])
    parser.add_argument("--grayscale", action="store_true", help="write single-channel images")
    parser.add_argument("--mask-format", default=None, choices=MASK_FORMATS,
                        help="default: 255 for binary/multilabel, 01 (index values) for multiclass")
    args = parser.parse_args(argv)
    mask_format = args.mask_format or ("01" if args.task == "multiclass" else "255")
    out = write_folder_dataset(
        args.out, args.task, args.num_classes, args.num_samples, args.image_size, args.seed,
        args.layout, args.val_fraction, args.image_format, args.grayscale, mask_format,
    )
    print(f"wrote {args.num_samples} samples to {out}")
    # a loss that serves the task (the default, bce_dice, cannot serve multiclass)
    loss = SUGGESTED_LOSS[args.task]
    # Train at the size written: the folder config's default (256) would upscale 128 px images and
    # cost several times the compute. The network takes multiples of 32.
    size = max(32, 32 * round(args.image_size / 32))
    overrides = (f"data=folder {root_override(out)} data.image_size={size} task={args.task} "
                 f"num_classes={args.num_classes} loss={loss}")
    if mask_format == "palette_rgb":
        n = 2 if args.task == "binary" else args.num_classes
        colors = ",".join(f"[{r},{g},{b}]" for r, g, b in class_palette(n).tolist())
        overrides += f" 'data.palette=[{colors}]'"
    print(f"train on it: python train.py {overrides}")


if __name__ == "__main__":
    main()
