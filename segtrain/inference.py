"""Use a trained checkpoint: rebuild network + task + validation transforms from it, predict masks.

Everything comes from the checkpoint itself, read as data only (``torch.load(weights_only=True)``
and the ``_target_`` allow-list of segtrain/trust.py), or from a folder of ``model.safetensors`` +
``config.json`` written by scripts/export.py (segtrain/pretrained.py): ``checkpoint["config"]`` is the training run's
resolved config (docs/ARCHITECTURE.md, "Checkpoints"), so the network (``config["model"]``), the
task (``config["task"]``, ``config["num_classes"]``) and the validation pipeline
(``config["data"]["val_transforms"]``, e.g. resize + normalise) are rebuilt without retyping
any training option. ``checkpoint["state_dict"]`` holds the LightningModule's weights; the
network's are those under ``net.``.

Mask files written by :func:`save_mask` (one per image, at the image's original size):

* ``binary``: 8-bit grayscale PNG, 0 = background, 255 = foreground (``sigmoid(logit) > threshold``);
* ``multiclass``: 8-bit palette ("P") PNG whose pixel values are the class indices
  ``0..num_classes-1`` (``argmax`` over the classes); the palette only colours them for viewing,
  ``np.array(Image.open(f))`` gives the indices back;
* ``multilabel``: one 0/255 PNG per label, ``<stem>_label<k>.png`` (labels overlap, so one index
  image cannot hold them).

These are also the mask formats the folder datamodule reads, so predictions can be corrected
and trained on.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from datamodules.io import IMAGE_EXTENSIONS, adapt_channels, read_image as read_image_file, to_display
from datamodules.masks import class_palette
from datamodules.normalization import normalization_transform
from datamodules.transforms import build_transforms

from .atomic import atomic_write_bytes, storage_errors
from .pretrained import is_pretrained_folder, read_pretrained
from .sliding import whole_image_logits
from .task import logits_to_mask
from .trust import load_checkpoint as trusted_load
from .utils import build

#: Image suffixes predict.py picks up in a folder (case-insensitive): what training reads.
IMAGE_SUFFIXES = IMAGE_EXTENSIONS

#: smp encoders halve the resolution 5 times: inputs must be multiples of 32.
SIZE_MULTIPLE = 32


@dataclass
class InferenceModel:
    """What a checkpoint gives for inference.

    Attributes:
        net: the segmentation network (eval mode), logits ``[B, out_channels, H, W]``.
        task: ``binary`` | ``multiclass`` | ``multilabel``.
        num_classes: classes of the task (1 for binary).
        transform: the validation pipeline (albumentations ``Compose`` ending in ``ToTensorV2``);
            ``None`` for a volume checkpoint (segtrain/predict_volume.py normalises volumes itself).
        config: the training run's resolved config (plain dict).
        sliding_window: the window options validation used (segtrain/sliding.py), ``None`` when
            the network saw whole (resized) images in one pass.
        preprocessing: the training input (``channels``, ``channel_select``, ``dtype``,
            ``normalization`` spec of datamodules/normalization.py, already part of ``transform``);
            ``None`` for checkpoints whose transforms normalise themselves (older runs, synthetic data).
        postprocessing: the plan chosen on validation at the end of training
            (segtrain/postprocessing.py, ``{"largest_component": [classes]}``), ``None``: none.
    """

    net: nn.Module
    task: str
    num_classes: int
    transform: Any
    config: dict[str, Any]
    sliding_window: dict[str, Any] | None = None
    preprocessing: dict[str, Any] | None = None
    postprocessing: dict[str, Any] | None = None


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", trust: bool = False
) -> dict[str, Any]:
    """Read a checkpoint written by the harness as data, with errors that say what is wrong.

    The load is ``torch.load(weights_only=True)`` and every ``_target_`` of its config is checked
    against the allow-list before anything is built (segtrain/trust.py).

    Args:
        path: a ``.ckpt`` file.
        map_location: where tensors are loaded.
        trust: skip the ``_target_`` allow-list (``trust_checkpoint=true``: a file whose source you trust).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint of this harness (unreadable, or without ``config``/``state_dict``).
        UntrustedCheckpointError: pickled objects, or a ``_target_`` off the allow-list (a ``ValueError``).
    """
    from .resume import check_checkpoint_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"ckpt_path={path} does not exist. Give a checkpoint of a training run, e.g. "
            "<run folder>/checkpoints/last.ckpt (or a best-*.ckpt next to it), or a folder written by scripts/export.py."
        )
    check_checkpoint_file(path)
    checkpoint = trusted_load(path, trust=trust, map_location=map_location)
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict). Give a .ckpt written by train.py.")
    if not isinstance(checkpoint.get("config"), Mapping):
        raise ValueError(
            f"{path} has no 'config' entry, so the network and transforms cannot be rebuilt from it. "
            "Use a checkpoint written by train.py of this project (it stores the resolved run config)."
        )
    return checkpoint


def network_state(state_dict: Mapping[str, torch.Tensor], prefix: str = "net.") -> dict[str, torch.Tensor]:
    """The network's weights out of the LightningModule's ``state_dict`` (keys under ``net.``)."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def build_val_transform(config: Mapping[str, Any], preprocessing: Mapping[str, Any] | None = None) -> Any:
    """The training run's validation pipeline (resize, ..., the stored normalisation, then ToTensorV2)."""
    import albumentations as A

    data = config.get("data") or {}
    transform = build_transforms(data.get("val_transforms"), seed=0)
    *user, to_tensor = transform.transforms
    if str(data.get("_target_", "")).endswith("FolderDataModule") and data.get("image_size"):
        # The folder datamodule's resize mode puts its Resize before the configured pipeline.
        size = int(data["image_size"])
        user = [A.Resize(size, size), *user]
    spec = (preprocessing or {}).get("normalization")
    tail = [normalization_transform(spec)] if spec is not None else []
    return A.Compose([*user, *tail, to_tensor], seed=0)


def recorded_sliding_window(checkpoint: Mapping[str, Any] | None, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """How validation inferred: ``checkpoint["inference"]``, else read off the folder data config."""
    if checkpoint is not None and "inference" in checkpoint:
        return checkpoint["inference"]
    data = config.get("data") or {}
    if str(data.get("_target_", "")).endswith("FolderDataModule") and not data.get("image_size") and data.get("crop_size"):
        return {"window": int(data["crop_size"]), **(data.get("sliding_window") or {})}
    return None


def is_volume(preprocessing: Mapping[str, Any] | None) -> bool:
    """Whether a checkpoint's ``preprocessing`` is that of a volume run (``kind: volume``, nnU-Net data)."""
    return isinstance(preprocessing, Mapping) and preprocessing.get("kind") == "volume"


def load_inference_model(path: str | os.PathLike, device: str | torch.device = "cpu", trust: bool = False) -> InferenceModel:
    """Rebuild network (with its trained weights), task and validation transforms from a checkpoint.

    Args:
        path: checkpoint written by ``train.py``, or a folder written by ``scripts/export.py``
            (``model.safetensors`` + ``config.json``, segtrain/pretrained.py).
        device: where the network is put.
        trust: skip the ``_target_`` allow-list (segtrain/trust.py) for a file whose source you trust.
    """
    if os.path.isdir(path):
        if not is_pretrained_folder(path):
            raise FileNotFoundError(
                f"ckpt_path={path} is a folder without config.json + model.safetensors. Give a folder written by "
                "scripts/export.py, or a .ckpt file (e.g. <run folder>/checkpoints/last.ckpt)."
            )
        net, config = read_pretrained(path, trust=trust)
        sliding = config["inference"] if config.get("inference") is not None else recorded_sliding_window(None, config)
        preprocessing = config.get("preprocessing")
        postprocessing = config.get("postprocessing")
    else:
        checkpoint = load_checkpoint(path, trust=trust)
        config = dict(checkpoint["config"])
        model_config = dict(config["model"])
        if "encoder_weights" in model_config:
            model_config["encoder_weights"] = None  # the checkpoint's weights replace them: download nothing
        # The same builder as training (conf/model: segtrain.network.build_network), untrained here.
        net = build(model_config)
        net.load_state_dict(network_state(checkpoint["state_dict"]))
        sliding = recorded_sliding_window(checkpoint, config)
        preprocessing = checkpoint.get("preprocessing")
        postprocessing = checkpoint.get("postprocessing")
    net.eval().to(device)
    return InferenceModel(
        net=net,
        task=str(config["task"]),
        num_classes=int(config["num_classes"]),
        # A volume run's val_transforms are MONAI dictionary transforms, not an albumentations pipeline.
        transform=None if is_volume(preprocessing) else build_val_transform(config, preprocessing),
        config=config,
        sliding_window=sliding,
        preprocessing=preprocessing,
        postprocessing=postprocessing,
    )


def _run_checkpoint(folder: str) -> str | None:
    """The checkpoint a run folder predicts with: its best (``best*.ckpt``), else ``last.ckpt``; ``None``: not a run."""
    found = sorted(Path(folder, "checkpoints").glob("best*.ckpt"), key=os.path.getmtime)
    if found:
        return str(found[-1])
    last = Path(folder, "checkpoints", "last.ckpt")
    return str(last) if last.is_file() else None


def resolve_checkpoints(ckpt_path: Any) -> list[str]:
    """The model(s) ``ckpt_path`` names: a ``.ckpt``, an exported folder, a run folder, a list of these,
    or a multirun folder (every job folder's best checkpoint -- the folds of a cross-validation).

    Raises:
        FileNotFoundError: a path that does not exist, or a folder holding no model (naming what it looked for).
    """
    if isinstance(ckpt_path, (list, tuple)) or type(ckpt_path).__name__ == "ListConfig":
        return [p for item in ckpt_path for p in resolve_checkpoints(item)]
    path = os.fspath(ckpt_path)
    if not os.path.isdir(path) or is_pretrained_folder(path):
        return [path]
    own = _run_checkpoint(path)
    if own is not None:
        return [own]
    jobs = sorted(p for p in (os.path.join(path, d) for d in os.listdir(path)) if os.path.isdir(p))
    found = [c for c in (_run_checkpoint(j) for j in jobs) if c is not None]
    if not found:
        raise FileNotFoundError(
            f"ckpt_path={path} is a folder without a model: no config.json + model.safetensors (scripts/export.py), "
            "no checkpoints/ (a run folder) and no job folder with checkpoints/ (a multirun). Give one of those or a "
            ".ckpt file."
        )
    return found


def load_inference_models(ckpt_path: Any, device: str | torch.device = "cpu", trust: bool = False) -> list[InferenceModel]:
    """Every model ``ckpt_path`` names (:func:`resolve_checkpoints`), checked to form an ensemble.

    The members must share the task, the classes, the input channels and the resize (``data.image_size``);
    each keeps its own window and normalisation (the folds of a cross-validation have their own statistics).

    Raises:
        ValueError: members that disagree, naming the two files and what differs.
    """
    paths = resolve_checkpoints(ckpt_path)
    models = [load_inference_model(p, device=device, trust=trust) for p in paths]

    def shape(m: InferenceModel) -> dict[str, Any]:
        pre = m.preprocessing or {"channels": 3, "channel_select": None}
        return {"task": m.task, "num_classes": m.num_classes, "channels": pre.get("channels"),
                "channel_select": pre.get("channel_select"), "data.image_size": (m.config.get("data") or {}).get("image_size")}

    first = shape(models[0])
    for path, model in zip(paths[1:], models[1:]):
        other = shape(model)
        if other != first:
            diff = ", ".join(f"{k}: {first[k]!r} vs {other[k]!r}" for k in first if first[k] != other[k])
            raise ValueError(f"{paths[0]} and {path} cannot form an ensemble ({diff}): give models trained for the "
                             "same task, classes and input.")
    return models


def ensemble_postprocessing(models: list[InferenceModel]) -> dict[str, Any] | None:
    """The postprocessing of an ensemble: a class keeps only its largest component when every member chose that."""
    plans = [m.postprocessing for m in models]
    if any(not p for p in plans):
        return None
    common = set(plans[0].get("largest_component", []))
    for plan in plans[1:]:
        common &= set(plan.get("largest_component", []))
    return {"largest_component": sorted(common)}


# --------------------------------------------------------------------------------------------
# images in
# --------------------------------------------------------------------------------------------


def list_images(input_path: str | os.PathLike) -> list[str]:
    """The image files to predict: ``input_path`` itself, or the images directly inside the folder.

    Raises:
        FileNotFoundError: the path does not exist, or the folder holds no image file.
        ValueError: a single file that is not an image.
    """
    path = os.path.abspath(os.fspath(input_path))
    if os.path.isfile(path):
        if not path.lower().endswith(IMAGE_SUFFIXES):
            raise ValueError(
                f"input={input_path} is not an image file (expected one of {', '.join(IMAGE_SUFFIXES)}); "
                "give an image or a folder of images."
            )
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"input={input_path} does not exist. Give an image file or a folder of images.")
    files = sorted(
        os.path.join(path, f)
        for f in os.listdir(path)
        if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(path, f))
    )
    if not files:
        raise FileNotFoundError(
            f"input={input_path} holds no image files ({', '.join(IMAGE_SUFFIXES)}); sub-folders are not "
            "searched. Point input at the folder that contains the images."
        )
    return files


def read_image(path: str, preprocessing: Mapping[str, Any] | None = None) -> np.ndarray:
    """An image file as ``[H, W, C]``, read exactly as the folder datamodule reads training images.

    Every channel in the file's own dtype (datamodules/io.py), then the training run's channel
    selection (``preprocessing["channel_select"]``) and count: a greyscale image for an RGB model is
    repeated to 3 channels.

    Raises:
        ValueError: the file cannot be decoded, or has another channel count than the model takes
            (naming the file and both counts).
    """
    image = read_image_file(Path(path))
    if preprocessing is None:  # older checkpoints and synthetic data: 8-bit RGB
        preprocessing = {"channels": 3, "channel_select": None, "dtype": "uint8"}
    try:
        return adapt_channels(image, preprocessing.get("channels"), preprocessing.get("channel_select"), path)
    except ValueError as err:
        raise ValueError(f"{err} The model was trained on {preprocessing.get('channels')}-channel "
                         f"{preprocessing.get('dtype')} images.") from None


def preprocess(image: np.ndarray, transform: Any) -> torch.Tensor:
    """Apply the validation pipeline: ``[H, W, C]`` -> float32 ``[C, h, w]``."""
    return transform(image=image)["image"].float()


def pad_batch(images: Sequence[torch.Tensor], multiple: int = SIZE_MULTIPLE) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Stack images of possibly different sizes into one batch, zero-padded at the bottom/right.

    The padded size is the largest height/width in the batch rounded up to ``multiple`` (the
    network's total downsampling), so any pipeline -- with or without a Resize -- can be batched.

    Returns:
        ``(batch [B, 3, H, W], sizes)`` with each image's unpadded ``(h, w)``, to crop the logits.
    """
    sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in images]
    height = -(-max(h for h, _ in sizes) // multiple) * multiple
    width = -(-max(w for _, w in sizes) // multiple) * multiple
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for i, t in enumerate(images):
        batch[i, :, : t.shape[-2], : t.shape[-1]] = t
    return batch, sizes


# --------------------------------------------------------------------------------------------
# masks out
# --------------------------------------------------------------------------------------------


def predicted_mask(logits: torch.Tensor, task: str, size: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """One image's logits -> its mask file values at the original image size.

    The logits (not the hard mask) are resized -- bilinear -- so edges stay smooth when the
    network saw a downscaled image; then :func:`segtrain.task.logits_to_mask` decides the pixels
    (as for the training pictures) and the values are encoded as the files hold them.

    Args:
        logits: ``[C, h, w]`` for one image, cropped to the unpadded input.
        task: ``binary`` | ``multiclass`` | ``multilabel``.
        size: original ``(H, W)``.
        threshold: probability above which a pixel is foreground (binary, multilabel).

    Returns:
        uint8 ``[H, W]``: 0/255 (binary) or class indices (multiclass); ``[C, H, W]`` 0/255 (multilabel).
    """
    logits = logits.float()
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    mask = logits_to_mask(logits, task, threshold)
    if task == "multiclass":
        return mask.to(torch.uint8)
    mask = mask.to(torch.uint8) * 255
    return mask[0] if task == "binary" else mask


def save_mask(mask: np.ndarray, task: str, num_classes: int, folder: str, stem: str) -> list[str]:
    """Write one image's mask as PNG(s) (formats in the module docstring). Returns the paths."""
    if task == "multilabel":
        paths = []
        for k in range(mask.shape[0]):
            paths.append(os.path.join(folder, f"{stem}_label{k}.png"))
            _save_png(Image.fromarray(np.ascontiguousarray(mask[k])), paths[-1])
        return paths
    path = os.path.join(folder, f"{stem}.png")
    if task == "multiclass":
        img = Image.fromarray(mask)  # uint8 [H, W] -> mode "L"; putpalette turns it into "P", values kept
        img.putpalette(class_palette(max(num_classes, 2)).reshape(-1).tolist())
    else:
        img = Image.fromarray(mask)
    _save_png(img, path)
    return [path]


def overlay(image: np.ndarray, mask: np.ndarray, task: str, num_classes: int, alpha: float = 0.5) -> np.ndarray:
    """The image with the predicted classes blended in colour (background left as is).

    Drawn with torchvision's ``draw_segmentation_masks`` in the colours of the training
    prediction grid (segtrain/callbacks.py), so a class has the same colour in both.

    Args:
        image: ``[H, W, C]`` at the original size, as read (shown as RGB by ``datamodules.io.to_display``).
        mask: as returned by :func:`predicted_mask`.
        task: decides how ``mask`` is read.
        num_classes: classes of the task.
        alpha: opacity of the colour.

    Returns:
        uint8 RGB ``[H, W, 3]``.
    """
    from torchvision.utils import draw_segmentation_masks

    from .callbacks import drawing_colors, masks_for_drawing

    m = torch.from_numpy(np.ascontiguousarray(mask))
    # Back to the training layout masks_for_drawing reads: binary [1, H, W] / multilabel [C, H, W] in {0, 1}.
    if task == "binary":
        m = (m > 0)[None].float()
    elif task == "multilabel":
        m = (m > 0).float()
    layers = masks_for_drawing(m, task, num_classes)
    colors = drawing_colors(task, num_classes)
    img = torch.from_numpy(to_display(image)).permute(2, 0, 1)
    return draw_segmentation_masks(img, layers, alpha=alpha, colors=colors).permute(1, 2, 0).numpy()


def save_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    task: str,
    num_classes: int,
    folder: str,
    stem: str,
    class_names: list[str] | None = None,
) -> str:
    """Write :func:`overlay` as ``<folder>/<stem>.png``, with a legend strip of the class colours below it.

    The overlay keeps the image's size (its top ``H`` rows); ``class_names`` (``data.class_names``
    of the training run: multiclass with the background first) name the colours through the
    training pictures' legend (:func:`segtrain.callbacks.legend_entries`; default: "foreground" /
    "class k"). Returns the path.
    """
    from .callbacks import legend_entries, legend_strip

    drawn = Image.fromarray(overlay(image, mask, task, num_classes))
    entries = legend_entries(task, num_classes, class_names)
    strip = legend_strip(entries, width=drawn.width, font_size=max(10, min(24, drawn.width // 40)))
    picture = Image.new("RGB", (drawn.width, drawn.height + strip.height), "white")
    picture.paste(drawn, (0, 0))
    picture.paste(strip, (0, drawn.height))
    path = os.path.join(folder, f"{stem}.png")
    _save_png(picture, path)
    return path


def _save_png(img: Image.Image, path: str) -> None:
    # Write-then-rename: under DDP or a re-run, a reader never sees half a PNG; a full disk or an
    # unwritable folder stops with the file's name (StorageError), not a bare "[Errno 28]".
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    with storage_errors(path, "the prediction"):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        atomic_write_bytes(buffer.getbuffer(), path)


@torch.no_grad()
def predict_images(model: InferenceModel, images: Sequence[np.ndarray], threshold: float = 0.5) -> list[np.ndarray]:
    """Masks for a list of ``[H, W, C]`` images (as :func:`read_image` gives them) in one batch (the in-process API;
    predict.py batches via Lightning).

    Returns:
        One mask per image at its original size (see :func:`predicted_mask`), with the checkpoint's
        postprocessing applied, as predict.py writes them.
    """
    device = next(model.net.parameters()).device
    tensors = [preprocess(img, model.transform) for img in images]
    batch, sizes = pad_batch(tensors)
    logits = whole_image_logits(model.net, batch.to(device), model.sliding_window)
    return [
        postprocess_mask(predicted_mask(logits[i, :, :h, :w], model.task, img.shape[:2], threshold).cpu().numpy(),
                         model.task, model.postprocessing)
        for i, ((h, w), img) in enumerate(zip(sizes, images))
    ]


def postprocess_mask(mask: np.ndarray, task: str, plan: Mapping[str, Any] | None) -> np.ndarray:
    """Apply a postprocessing plan (segtrain/postprocessing.py) to a mask as :func:`predicted_mask` encodes it."""
    if not plan or not plan.get("largest_component"):
        return mask
    from .postprocessing import apply_postprocessing

    if task == "multiclass":
        return apply_postprocessing(mask, task, plan)
    labels = (mask > 0).astype(np.uint8)  # binary [H, W]: class 1; multilabel [C, H, W]: the labels
    return apply_postprocessing(labels, task, plan) * np.uint8(255)


# --------------------------------------------------------------------------------------------
# command line of scripts/predict.py and scripts/export.py
# --------------------------------------------------------------------------------------------


def parse_overrides(schema: Any, argv: Sequence[str], required: Sequence[str] = ("ckpt_path",)) -> Any:
    """Hydra-style ``key=value`` arguments merged onto a dataclass of defaults.

    Args:
        schema: a dataclass (type) whose fields are the accepted keys and their defaults.
        argv: the arguments (``sys.argv[1:]``); nested keys as ``trainer.devices=2``.
        required: keys that must be given (their default is ``None``).

    Returns:
        An ``omegaconf`` config with the schema's types checked.

    Raises:
        ValueError: an argument without ``=``, an unknown key, a wrongly typed value or a
            missing required key -- naming it and listing the accepted keys.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    base = OmegaConf.structured(schema)
    keys = ", ".join(f"{k}=" for k in base)
    for arg in argv:
        if "=" not in arg:
            raise ValueError(f"Argument {arg!r} is not key=value. Accepted keys: {keys}")
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(list(argv)))
    except OmegaConfBaseException as err:
        raise ValueError(f"Bad argument: {str(err).splitlines()[0]}. Accepted keys: {keys}") from None
    for key in required:
        if cfg.get(key) in (None, ""):
            raise ValueError(f"{key}=... is required. Accepted keys: {keys}")
    return cfg
