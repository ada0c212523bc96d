"""Predict masks with a trained checkpoint: one mask PNG + one overlay PNG per image.

    python scripts/predict.py ckpt_path=logs/runs/<run>/checkpoints/last.ckpt input=photos/ output=pred/

Network, task and validation transforms come from the checkpoint (no training option to retype).
Each image is seen as validation saw it -- at native resolution by sliding windows of the
training crop size (``checkpoint["inference"]``), or resized by the validation transforms
when the run resized (``data.image_size``) -- and its mask is written at the image's original size: ``<output>/masks/<stem>.png`` (formats: segtrain/inference.py) and
``<output>/overlays/<stem>.png``. Images of different sizes can share a batch.

Runs through ``Trainer.predict``: ``trainer.accelerator=gpu``, ``trainer.devices=4`` (DDP) work
as in training. Each rank writes the masks of its own share of the images (a
``BasePredictionWriter``), nothing is gathered in one process; Lightning's predict sampler
gives every image to exactly one rank.

``ckpt_path`` is a ``.ckpt`` written by train.py, a folder written by scripts/export.py
(``model.safetensors`` + ``config.json``) or a run folder (its best checkpoint); a list of them
(``'ckpt_path=[a.ckpt,b.ckpt]'``) or a multirun folder (every job's best checkpoint: the folds of a
cross-validation) is an ensemble, whose probabilities are averaged (segtrain/tta.py). Every file is
read as data only: a config naming a ``_target_`` off the allow-list is refused unless
``trust_checkpoint=true`` (segtrain/trust.py).

``tta=flip`` averages mirrored passes (horizontal, vertical, both) in probability space, as the
end-of-fit evaluation does with ``evaluation.tta=flip``; 4 passes per image. The postprocessing
chosen on validation at the end of training (``checkpoint["postprocessing"]``: a class's largest
connected component) is applied to the masks; an ensemble applies what all its members chose.

An image that cannot be read is skipped: every readable image gets its mask, the unreadable ones
are listed at the end with their errors, and the exit status is non-zero only when no image could
be predicted (``strict=true``: any unreadable image fails the job). A mask that cannot be written
(full disk, unwritable folder) stops the job with the file's name.

SIGTERM (``timeout``, a cluster's time limit, ``kill``) stops the job after the batch being predicted:
the masks written so far are kept, a line says how many, and the exit status is 143 (128 + SIGTERM).

A progress bar counts the images as their masks are written (``progress=null``: shown when
stderr is a terminal; ``true`` / ``false`` force it on / off). A checkpoint trained with
``data.pad=false`` refuses an image smaller than its window, as validation did (the image is
listed with its size and the window, like an unreadable one).

Volumes. A checkpoint of a volume run (``checkpoint["preprocessing"]["kind"] == "volume"``, nnU-Net
data) predicts volumes instead (segtrain/predict_volume.py): ``input`` is a folder of nnU-Net case
files ``<case>_XXXX<ending>`` (one file per channel; an nnU-Net dataset folder means its
``imagesTs/``), or single-channel ``.nii.gz`` / ``.nii`` / ``.tif`` files; each case is normalised as
in training, predicted by sliding windows of the training patch (the volume stays on the CPU,
the windows run on the accelerator), and written as ``<output>/<case><ending>`` with the input's
shape, affine, spacing and header; ``tta=flip`` averages the 8 mirrors of the three axes;
``overlay=true`` adds ``<output>/overlays/<case>.png`` (a few axial slices through the largest
predicted object). Volumes run one at a time in this process on one device
(``trainer.accelerator``; ``trainer.devices`` > 1 is refused); ``batch_size`` and ``num_workers``
do not apply. A case that cannot be read (a missing channel is refused up front) is listed like an
unreadable image.

Keys (``key=value``): ckpt_path, input, output, batch_size, num_workers, threshold, overlay,
strict, progress, tta, postprocessing, trust_checkpoint, trainer.{accelerator,devices,strategy,precision}.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import BasePredictionWriter  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from datamodules.crops import check_fits_window  # noqa: E402

from segtrain.inference import (  # noqa: E402
    InferenceModel,
    _save_png,
    ensemble_postprocessing,
    is_volume,
    list_images,
    load_inference_models,
    resolve_checkpoints,
    pad_batch,
    parse_overrides,
    postprocess_mask,
    predicted_mask,
    preprocess,
    read_image,
    save_mask,
    save_overlay,
)
from segtrain.lightning_compat import destroy_process_group_at_exit  # noqa: E402
from segtrain.run_log import quiet_known_noise  # noqa: E402
from segtrain.sliding import whole_image_logits  # noqa: E402
from segtrain.tta import average_predictions, check_tta  # noqa: E402


@dataclass
class TrainerArgs:
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    precision: Any = "32-true"


@dataclass
class PredictArgs:
    ckpt_path: Any = None  # a .ckpt, an exported or run folder; a list or a multirun folder: an ensemble (required)
    input: Any = None  # an image file or a folder of images (required)
    output: str = "predictions"  # gets masks/ and overlays/
    batch_size: int = 8
    num_workers: int = 0
    threshold: float = 0.5  # probability cut for binary / multilabel
    overlay: bool = True
    strict: bool = False  # any unreadable image fails the job (default: only when none could be predicted)
    progress: bool | None = None  # per-image progress bar: null = when stderr is a terminal, true / false = always / never
    tta: Any = None  # flip: mirrored passes averaged in probability space (4 passes per image)
    postprocessing: bool = True  # apply the checkpoint's postprocessing (chosen on validation at the end of training)
    trust_checkpoint: bool = False  # skip the _target_ allow-list: only for a file whose source you trust
    trainer: TrainerArgs = field(default_factory=TrainerArgs)


class PredictionFailed(ValueError):
    """No image could be predicted (or, with ``strict=true``, some could not); lists each with its error."""


class PredictionStopped(RuntimeError):
    """SIGTERM arrived: the job stopped between batches; the masks written so far are kept."""

    #: The exit status of a process ended by SIGTERM.
    EXIT_STATUS = 128 + 15


class ImageFolderDataset(Dataset):
    """Image files -> network inputs; keeps what is needed to write each mask back.

    An image that cannot be decoded or transformed becomes ``{"path", "error"}`` instead of
    failing the loader, so one corrupt file does not cost the others their masks; so does an
    image smaller than ``window`` (given for a checkpoint trained with ``data.pad=false``).
    """

    def __init__(self, files: list[str], transform: Any, window: int | None = None,
                 preprocessing: dict[str, Any] | None = None) -> None:
        self.files = files
        #: One transform, or one per ensemble member (each may normalise with its own statistics).
        self.transform = transform
        self.window = window
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        try:
            image = read_image(path, self.preprocessing)
            if self.window is not None:
                check_fits_window(image.shape[:2], self.window, f"Image {path}", fix=(
                    f"the checkpoint was trained with data.pad=false, so it predicts images of at least "
                    f"{self.window}x{self.window} px only; give larger images, or train with data.pad=true"))
            inputs = ([preprocess(image, t) for t in self.transform] if isinstance(self.transform, list)
                      else preprocess(image, self.transform))
            return {"image": inputs, "path": path, "size": image.shape[:2]}
        except Exception as err:  # noqa: BLE001 -- any decoding/transform failure is this image's own
            return {"path": path, "error": f"{type(err).__name__}: {err}"}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad the readable images to a common, network-compatible size; set the unreadable ones aside.

    An ensemble's items hold one input per member: ``image`` is then a list of batches, one per member.
    """
    ok = [it for it in items if "error" not in it]
    batch: dict[str, Any] = {"failed": [(it["path"], it["error"]) for it in items if "error" in it]}
    if not ok:
        images, sizes = None, []
    elif isinstance(ok[0]["image"], list):
        padded = [pad_batch([it["image"][k] for it in ok]) for k in range(len(ok[0]["image"]))]
        images, sizes = [p[0] for p in padded], padded[0][1]
    else:
        images, sizes = pad_batch([it["image"] for it in ok])
    batch.update(image=images, input_size=sizes, size=[tuple(it["size"]) for it in ok], path=[it["path"] for it in ok])
    return batch


class PredictModule(L.LightningModule):
    """The trained network(s) behind ``Trainer.predict``: logits -> masks at the original size.

    Several models (an ensemble) and ``tta="flip"`` average probabilities (segtrain/tta.py); the
    postprocessing plan is applied to each mask.
    """

    def __init__(self, models: InferenceModel | list[InferenceModel], threshold: float, tta: str | None = None,
                 postprocessing: dict[str, Any] | None = None) -> None:
        super().__init__()
        models = models if isinstance(models, list) else [models]
        self.nets = torch.nn.ModuleList([m.net for m in models])
        self.windows = [m.sliding_window for m in models]
        self.task = models[0].task
        self.threshold = threshold
        self.tta = check_tta(tta)
        self.plan = postprocessing

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        if batch["image"] is None:  # every image of this batch was unreadable
            return {"masks": [], "path": [], "failed": batch["failed"]}
        predictors = [lambda x, net=net, window=window: whole_image_logits(net, x, window)
                      for net, window in zip(self.nets, self.windows)]
        logits = average_predictions(predictors, batch["image"], self.task, self.tta)
        masks = [
            postprocess_mask(predicted_mask(logits[i, :, :h, :w], self.task, size, self.threshold).cpu().numpy(),
                             self.task, self.plan)
            for i, ((h, w), size) in enumerate(zip(batch["input_size"], batch["size"]))
        ]
        return {"masks": masks, "path": batch["path"], "failed": batch["failed"]}


class MaskWriter(BasePredictionWriter):
    """Writes each batch's masks (and overlays) as soon as it is predicted, on the rank that predicted it.

    Args:
        output: folder receiving ``masks/`` and ``overlays/``.
        task: decides the mask format.
        num_classes: classes of the task (palette size).
        overlay: also write the colour overlays (with a legend of the class colours).
        class_names: the training run's ``data.class_names`` (multiclass: the background first), named
            in the legend as in the training pictures (default: "foreground" / "class k").
        progress: the per-image progress bar (rank 0): ``None`` = when stderr is a terminal.
    """

    def __init__(
        self, output: str, task: str, num_classes: int, overlay: bool = True, class_names: list[str] | None = None,
        progress: bool | None = None, preprocessing: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self.task = task
        self.num_classes = num_classes
        self.overlay = overlay
        self.class_names = class_names
        self.written: list[str] = []
        self.predicted = 0
        self.total = 0  # images of this rank's share, set when prediction starts
        self.failed: list[tuple[str, str]] = []
        self.progress = progress
        self.preprocessing = preprocessing
        self.bar: Any = None

    def on_predict_start(self, trainer, pl_module) -> None:
        loaders = trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        self.total = total = -(-len(loader.dataset) // trainer.world_size)  # rank 0's share (the sampler deals round-robin)
        if not trainer.is_global_zero or self.progress is False:
            return
        desc = "predicting (images)" if trainer.world_size == 1 else "predicting (rank 0's images)"
        # disable=None: tqdm's own rule, off when stderr is not a terminal.
        self.bar = tqdm(total=total, desc=desc, unit="image", disable=None if self.progress is None else False)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.failed += prediction["failed"]
        self.predicted += len(prediction["masks"])
        for mask, path in zip(prediction["masks"], prediction["path"]):
            stem = os.path.splitext(os.path.basename(path))[0]
            self.written += save_mask(mask, self.task, self.num_classes, os.path.join(self.output, "masks"), stem)
            if self.overlay:
                self.written.append(
                    save_overlay(
                        read_image(path, self.preprocessing), mask, self.task, self.num_classes, os.path.join(self.output, "overlays"), stem,
                        self.class_names,
                    )
                )
            if self.bar is not None:
                self.bar.update(1)
        if self.bar is not None and prediction["failed"]:
            self.bar.update(len(prediction["failed"]))
        # Lightning's SIGTERM handler only sets this flag, which its prediction loop never reads: stop here.
        if trainer.received_sigterm:
            raise PredictionStopped(
                f"Stopped by SIGTERM: masks of {self.predicted} of {self.total} image(s) written to "
                f"{os.path.join(self.output, 'masks')} and kept; the others were not predicted. Run again on the "
                "rest to finish."
            )

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        # Under DDP each rank saw its own share: gather the counts and failures so every rank decides alike.
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            shares: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, (self.predicted, self.failed))
            self.predicted = sum(n for n, _ in shares)
            self.failed = sorted(f for _, failed in shares for f in failed)


def no_pad_window(options: dict[str, Any] | None) -> int | None:
    """The window an image must fill when the checkpoint was trained with ``data.pad=false``, else ``None``."""
    return None if options is None or options.get("pad", True) else int(options["window"])


def check_unique_stems(files: list[str]) -> None:
    """Masks are named by stem: ``a.png`` and ``a.jpg`` would overwrite each other's mask."""
    seen: dict[str, str] = {}
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        if stem in seen:
            raise ValueError(
                f"{seen[stem]} and {f} share the name {stem!r}, so their masks would overwrite each other. "
                "Rename one, or predict them into different output folders."
            )
        seen[stem] = f


def predict(args: Any) -> list[str]:
    """Run the prediction described by ``args`` (a :class:`PredictArgs` config). Returns written files (rank 0's)."""
    quiet_known_noise()  # Lightning's advertisements and deprecations nobody here can act on (segtrain/run_log.py)
    check_tta(args.tta)  # a wrong value fails before any model is loaded
    models = load_inference_models(args.ckpt_path, trust=bool(args.trust_checkpoint))
    if any(is_volume(m.preprocessing) for m in models):  # the checkpoint decides what the input is
        return predict_volumes(args, models)
    files = list_images(args.input)
    check_unique_stems(files)
    model = models[0]
    transform = model.transform if len(models) == 1 else [m.transform for m in models]
    windows = [w for w in (no_pad_window(m.sliding_window) for m in models) if w is not None]
    loader = DataLoader(
        ImageFolderDataset(files, transform, window=max(windows) if windows else None,
                           preprocessing=model.preprocessing),
        batch_size=int(args.batch_size),
        num_workers=int(args.num_workers),
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
    )
    class_names = (model.config.get("data") or {}).get("class_names")  # as the training pictures named them
    progress = None if args.progress is None else bool(args.progress)
    writer = MaskWriter(os.path.abspath(args.output), model.task, model.num_classes, bool(args.overlay), class_names,
                        progress, model.preprocessing)
    destroy_process_group_at_exit()  # Lightning does it for NCCL only; a gloo group left to exit aborts
    trainer = L.Trainer(
        **dict(args.trainer),
        logger=False,
        callbacks=[writer],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,  # the writer's bar counts images, not batches
    )
    plan = ensemble_postprocessing(models) if args.postprocessing else None
    if len(models) > 1 and trainer.is_global_zero:
        print(f"Ensemble of {len(models)} models: " + ", ".join(str(m) for m in resolve_checkpoints(args.ckpt_path)))
    module = PredictModule(models, float(args.threshold), args.tta, plan)
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    if trainer.is_global_zero:
        print(f"Wrote masks of {writer.predicted} image(s) to {os.path.join(os.path.abspath(args.output), 'masks')}")
    report_failures(writer.predicted, writer.failed, bool(args.strict), print if trainer.is_global_zero else None)
    return writer.written


def volume_device(trainer: Any) -> torch.device:
    """The one device volumes are predicted on, from ``trainer.accelerator`` / ``trainer.devices``.

    Raises:
        ValueError: several devices (volumes run in one process), or an accelerator that is not there.
    """
    devices = trainer.devices
    if devices not in ("auto", 1, "1", None, -1) and not (isinstance(devices, (list, tuple)) and len(devices) == 1) \
            and type(devices).__name__ != "ListConfig":
        raise ValueError(f"trainer.devices={devices}: volumes are predicted in one process on one device, one volume "
                         "at a time (the windows of a volume batch the accelerator). Set trainer.devices=1, or run "
                         "one predict.py per device on a share of the cases.")
    accelerator = str(trainer.accelerator).lower()
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={trainer.accelerator} but no CUDA device is available: use "
                         "trainer.accelerator=cpu (or auto)")
    if accelerator in ("gpu", "cuda", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    raise ValueError(f"trainer.accelerator={trainer.accelerator} is not one volumes are predicted on: use cpu, gpu "
                     "or auto")


def predict_volumes(args: Any, models: list[InferenceModel]) -> list[str]:
    """The volume path of :func:`predict` (module docstring, "Volumes"). Returns the written files."""
    from segtrain.predict_volume import list_volume_cases, predict_volume, write_prediction

    if not all(is_volume(m.preprocessing) for m in models):
        raise ValueError("The ensemble mixes volume and 2D checkpoints: give models trained on the same kind of data.")
    device = volume_device(args.trainer)
    for m in models:
        m.net.to(device)
    model = models[0]
    cases = list_volume_cases(args.input, int(model.preprocessing.get("channels") or 1))
    output = os.path.abspath(args.output)
    plan = ensemble_postprocessing(models) if args.postprocessing else None
    class_names = (model.config.get("data") or {}).get("class_names") or model.preprocessing.get("class_names")
    if len(models) > 1:
        print(f"Ensemble of {len(models)} models: " + ", ".join(str(m) for m in resolve_checkpoints(args.ckpt_path)))
    written: list[str] = []
    failed: list[tuple[str, str]] = []
    predicted = 0
    progress = None if args.progress is None else not bool(args.progress)
    for case in tqdm(cases, desc="predicting (volumes)", unit="volume", disable=progress):
        try:
            labels = predict_volume([m.net for m in models], case.images, [m.preprocessing for m in models],
                                    [m.sliding_window for m in models], args.tta, task=model.task, postprocessing=plan)
        except (ValueError, OSError) as err:  # this case's own files: the other cases still get their masks
            failed.append((f"case {case.case_id} ({', '.join(p.name for p in case.images)})",
                           f"{type(err).__name__}: {err}"))
            continue
        written.append(str(write_prediction(labels, output, case)))
        predicted += 1
        if args.overlay:
            written.append(save_volume_overlay(case, labels, model, os.path.join(output, "overlays"), class_names))
    print(f"Wrote masks of {predicted} volume(s) to {output}")
    report_failures(predicted, failed, bool(args.strict))
    return written


def save_volume_overlay(case: Any, labels: Any, model: InferenceModel, folder: str,
                        class_names: list[str] | None) -> str:
    """``<folder>/<case>.png``: a few axial slices of channel 0 with the prediction (segtrain/volume_pictures.py)."""
    from datamodules.volumes.io import read_volume
    from segtrain.volume_pictures import volume_picture

    specs = model.preprocessing.get("normalization") or [None]
    channel0 = read_volume(case.images[0]).array  # read again: the prediction freed the raw channels
    picture = volume_picture(channel0, labels, task=model.task, num_classes=model.num_classes,
                             class_names=class_names, name=case.case_id, spec=specs[0])
    path = os.path.join(folder, f"{case.case_id}.png")
    _save_png(picture, path)
    return path


def report_failures(predicted: int, failed: list[tuple[str, str]], strict: bool, show: Any = print) -> None:
    """List the unreadable images with their errors; raise :class:`PredictionFailed` if that fails the job.

    The job fails when nothing could be predicted, or with ``strict`` when anything could not.
    """
    if not failed:
        return
    lines = "\n".join(f"  {path}: {error}" for path, error in failed)
    text = f"{len(failed)} image(s) could not be read and got no mask:\n{lines}"
    if predicted == 0 or strict:
        why = "no image could be predicted" if predicted == 0 else "strict=true"
        raise PredictionFailed(f"{text}\nFailing the job ({why}). Fix or remove these files and run again.")
    if show is not None:
        show(text)


def main(argv: list[str] | None = None) -> None:
    args = parse_overrides(PredictArgs, sys.argv[1:] if argv is None else argv, required=("ckpt_path", "input"))
    try:
        predict(args)
    except PredictionFailed as err:
        print(err, file=sys.stderr)
        sys.exit(1)
    except PredictionStopped as err:
        print(err, file=sys.stderr)
        sys.exit(PredictionStopped.EXIT_STATUS)


if __name__ == "__main__":
    main()
