"""Score a folder of predicted masks against ground truth: the tables of the end-of-fit evaluation.

    python scripts/evaluate.py pred=pred/masks gt=data/val/masks output=eval task=binary
    python scripts/evaluate.py pred=other_tool/ gt=data/val/masks output=eval task=multiclass num_classes=5 \\
        ignore_index=255 tolerance=2 spacing=[0.5,0.5] topology=true class_names=[background,road,car,sign,sky]

Why: predictions made by another tool (nnU-Net, mmsegmentation, a colleague's script) are
scored by the same :class:`evaluation.Evaluator` as a training run's own evaluation, so every
number in a comparison means the same. Writes ``per_image.csv``, ``per_class.csv``,
``confusion.csv``, ``confusion.png`` and ``summary.json`` into ``output`` (formats:
evaluation/evaluator.py), prints one line per metric.

Masks are matched by file stem, files directly inside each folder (.png, .tif, .tiff, .bmp,
.npy; sub-folders are not searched, except that ``pred`` may be scripts/predict.py's output
folder, whose ``masks/`` is then read). As the folder datamodule and predict.py store them:
binary 0/1 or 0/255 (0/65535 for 16-bit files); multiclass class indices (palette PNGs hold
indices); multilabel one 0/1 or 0/255 mask per label, predictions ``<stem>_label<k>.png`` (as
predict.py writes them), ground truth ``<stem>_<k>.png`` (as training reads them). Only the
ground truth may hold ``ignore_index``.

Every problem with the input is an error before anything is scored, naming the files: a folder
missing or without masks, names on one side only, a prediction of another size than its ground
truth, values that fit no class. Decoded masks are kept in memory between the check and the
scoring up to :data:`KEEP_BYTES`, read again beyond.

Keys (``key=value``): pred, gt, output, task, num_classes, ignore_index, tolerance, spacing,
topology, class_names, progress.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from datamodules.io import read_header, read_mask_file  # noqa: E402
from datamodules.masks import binary_values, index_values  # noqa: E402
from evaluation import FILES, HIGHER_IS_BETTER, Evaluator  # noqa: E402
from segtrain.inference import parse_overrides  # noqa: E402

#: Mask files picked up (lossless formats only: a JPEG mask has values of no class at every edge).
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".npy")
#: Names listed per problem.
SHOWN = 10
#: Decoded masks kept between the check and the scoring (beyond it they are read twice).
KEEP_BYTES = 1 << 30


@dataclass
class EvaluateArgs:
    pred: Optional[str] = None  # folder of predicted masks (required)
    gt: Optional[str] = None  # folder of ground-truth masks (required)
    output: str = "evaluation"  # gets the tables, the matrix and summary.json
    task: Optional[str] = None  # binary | multiclass | multilabel (required)
    num_classes: Optional[int] = None  # binary: 1 (the default); multiclass: with the background
    ignore_index: Optional[int] = None  # ground-truth value of unlabelled pixels
    tolerance: float = 2.0  # NSD tolerance, in pixels (in the units of spacing when given)
    spacing: Optional[List[float]] = None  # pixel size per axis, e.g. [0.5,0.5]; null = 1
    topology: bool = False  # also clDice and the connected-component count error
    class_names: Optional[List[str]] = None  # as data.class_names: multiclass background first; binary one name
    progress: Optional[bool] = None  # null = when stderr is a terminal


@dataclass(frozen=True)
class Pair:
    """One image: its name (the stem) and its prediction and ground-truth files (one per label for multilabel)."""

    name: str
    pred: tuple[Path, ...]
    gt: tuple[Path, ...]


def _listed(names: list[str], total: int | None = None) -> str:
    total = len(names) if total is None else total
    shown = ", ".join(names[:SHOWN])
    return shown + (f" (+ {total - SHOWN} more)" if total > SHOWN else "")


def mask_files(folder: str, key: str) -> dict[str, Path]:
    """``{stem: file}`` of the mask files directly inside ``folder``.

    ``pred`` may be scripts/predict.py's output folder: without masks of its own but with a
    ``masks/`` sub-folder, that sub-folder is read.

    Raises:
        FileNotFoundError: the folder is missing or holds no mask file.
        ValueError: two files share a stem (``a.png`` and ``a.tif``).
    """
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"{key}={folder} does not exist or is not a folder: give the folder of "
                                f"{'predicted' if key == 'pred' else 'ground-truth'} masks.")

    def listing(where: Path) -> list[Path]:
        return sorted(p for p in where.iterdir() if p.is_file() and p.suffix.lower() in MASK_SUFFIXES
                      and not p.name.startswith("."))

    files = listing(path)
    if not files and key == "pred" and (path / "masks").is_dir():
        files = listing(path / "masks")  # predict.py's output folder: masks/ beside overlays/
    if not files:
        raise FileNotFoundError(f"{key}={folder} holds no mask files ({', '.join(MASK_SUFFIXES)}); sub-folders "
                                "are not searched. Point it at the folder that contains the masks.")
    by_stem: dict[str, Path] = {}
    for f in files:
        if f.stem in by_stem:
            raise ValueError(f"{by_stem[f.stem]} and {f} share the name {f.stem!r}: masks are matched by file "
                             "stem, keep one of them.")
        by_stem[f.stem] = f
    return by_stem


def _group_labels(files: dict[str, Path], pattern: str, num_classes: int, key: str, layout: str) -> dict[str, tuple]:
    """Multilabel: ``{stem: (file of label 0, ..., label C-1)}`` from files named by ``pattern`` (stem, k)."""
    labels: dict[str, dict[int, Path]] = {}
    strays = []
    for name, path in files.items():
        match = re.fullmatch(pattern, name)
        if match is None:
            strays.append(path.name)
            continue
        labels.setdefault(match.group(1), {})[int(match.group(2))] = path
    problems = []
    if strays:
        problems.append(f"files not named {layout}: {_listed(strays)}")
    incomplete = [f"{stem} (has labels {sorted(ks)})" for stem, ks in labels.items()
                  if set(ks) != set(range(num_classes))]
    if incomplete:
        problems.append(f"images without exactly the labels 0..{num_classes - 1}: {_listed(incomplete)}")
    if problems:
        raise ValueError(f"task=multilabel num_classes={num_classes} reads one mask per label, {layout} in "
                         f"{key}=; " + "; ".join(problems) + ". Rename the files, or fix num_classes.")
    return {stem: tuple(ks[k] for k in range(num_classes)) for stem, ks in labels.items()}


def find_pairs(pred_dir: str, gt_dir: str, task: str, num_classes: int) -> list[Pair]:
    """Predictions matched with their ground truth by stem, sorted by name.

    Raises:
        FileNotFoundError, ValueError: as :func:`mask_files`; names present on one side only
            (up to :data:`SHOWN` of each side listed); multilabel files off the naming scheme.
    """
    pred, gt = mask_files(pred_dir, "pred"), mask_files(gt_dir, "gt")
    if task == "multilabel":
        preds = _group_labels(pred, r"(.+)_label(\d+)", num_classes, "pred", "<stem>_label<k>")
        gts = _group_labels(gt, r"(.+)_(\d+)", num_classes, "gt", "<stem>_<k>")
    else:
        preds = {stem: (path,) for stem, path in pred.items()}
        gts = {stem: (path,) for stem, path in gt.items()}
    only_pred, only_gt = sorted(set(preds) - set(gts)), sorted(set(gts) - set(preds))
    if only_pred or only_gt:
        lines = []
        if only_pred:
            lines.append(f"  {len(only_pred)} prediction(s) without ground truth in {gt_dir}: {_listed(only_pred)}")
        if only_gt:
            lines.append(f"  {len(only_gt)} ground truth(s) without prediction in {pred_dir}: {_listed(only_gt)}")
        raise ValueError("Predicted and ground-truth masks are matched by file stem, and these names are on one "
                         "side only:\n" + "\n".join(lines) + "\nPredict the missing images, or give folders that "
                         "hold the same images.")
    return [Pair(stem, preds[stem], gts[stem]) for stem in sorted(preds)]


def check_sizes(pairs: list[Pair]) -> None:
    """Every prediction has its ground truth's size, read from the file headers (no decoding).

    Raises:
        ValueError: listing the images whose sizes differ, both sizes and files named.
    """
    wrong = []
    for pair in pairs:
        sizes = {path: read_header(path).size for path in (*pair.pred, *pair.gt)}
        if len(set(sizes.values())) > 1:
            shown = ", ".join(f"{path} is {h}x{w}" for path, (h, w) in sizes.items())
            wrong.append(f"  {pair.name}: {shown}")
    if wrong:
        listed = "\n".join(wrong[:SHOWN]) + (f"\n  (+ {len(wrong) - SHOWN} more)" if len(wrong) > SHOWN else "")
        raise ValueError(f"{len(wrong)} prediction(s) differ in size (HxW) from their ground truth:\n{listed}\n"
                         "Save predictions at the ground truth's size (scripts/predict.py writes each mask at its "
                         "image's original size).")


def decode(paths: tuple[Path, ...], task: str, num_classes: int, ignore_index: int | None) -> np.ndarray:
    """One image's mask as the Evaluator takes it: ``[H, W]`` (binary 0/1, multiclass indices) or ``[C, H, W]``.

    Raises:
        ValueError: naming the file whose values fit no class.
    """
    if task == "multiclass":
        return index_values(read_mask_file(paths[0]).values, str(paths[0]), num_classes, ignore_index)
    masks = []
    for path in paths:
        mask = read_mask_file(path)
        masks.append(binary_values(mask.values, str(path), mask.full, ignore_index))
    return masks[0] if task == "binary" else np.stack(masks)


def load_all(pairs: list[Pair], args: Any, bar: bool | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode every pair once, so that a bad value fails before any scoring; keep up to :data:`KEEP_BYTES`.

    Raises:
        ValueError: listing every file (up to :data:`SHOWN`) whose values fit no class.
    """
    kept: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    size = 0
    problems = []
    for pair in tqdm(pairs, desc="reading masks", unit="image", disable=bar):
        try:
            masks = (decode(pair.pred, args.task, args.num_classes, None),
                     decode(pair.gt, args.task, args.num_classes, args.ignore_index))
        except ValueError as err:
            problems.append(f"  {err}")
            continue
        if size + masks[0].nbytes + masks[1].nbytes <= KEEP_BYTES:
            kept[pair.name] = masks
            size += masks[0].nbytes + masks[1].nbytes
    if problems:
        more = f"\n  (+ {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
        raise ValueError(f"{len(problems)} mask(s) hold values that fit no class (predictions hold no "
                         "ignore_index):\n" + "\n".join(problems[:SHOWN]) + more)
    return kept


def evaluate(args: Any) -> dict[str, Any]:
    """Run the evaluation described by ``args`` (an :class:`EvaluateArgs` config); returns summary.json's dict."""
    task = args.task
    if args.num_classes is None:
        if task != "binary":
            raise ValueError(f"num_classes=... is required for task={task} (multiclass: with the background).")
        args.num_classes = 1
    spacing = None if args.spacing is None else list(args.spacing)
    names = None if args.class_names is None else list(args.class_names)
    # Settings first (task, ignore_index, spacing, names): their errors need no file.
    evaluator = Evaluator(task, args.num_classes, names, args.ignore_index, spacing, args.tolerance, args.topology)
    pairs = find_pairs(args.pred, args.gt, task, args.num_classes)
    check_sizes(pairs)
    bar = None if args.progress is None else not args.progress
    kept = load_all(pairs, args, bar)
    for pair in tqdm(pairs, desc="scoring", unit="image", disable=bar):
        if pair.name in kept:
            pred, gt = kept.pop(pair.name)
        else:  # beyond KEEP_BYTES: read again (checked already)
            pred = decode(pair.pred, task, args.num_classes, None)
            gt = decode(pair.gt, task, args.num_classes, args.ignore_index)
        evaluator.add(pair.name, pred, gt)
    summary = evaluator.write(args.output)
    print(f"Scored {len(pairs)} image(s), mean over images and classes:")
    for metric, value in summary["metrics"].items():
        better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
        print(f"  {metric:<17} {value:.4f}   ({better} is better)")
    print(f"Wrote {', '.join(FILES)} to {os.path.abspath(args.output)}")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_overrides(EvaluateArgs, sys.argv[1:] if argv is None else argv, required=("pred", "gt", "task"))
    return evaluate(args)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as err:  # the input's problem: its message is the whole story
        print(f"evaluate.py: {err}", file=sys.stderr)
        sys.exit(1)
