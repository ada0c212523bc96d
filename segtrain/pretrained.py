"""Shareable weights: a folder with ``model.safetensors`` + ``config.json``, as segmentation-models-pytorch writes it.

Written by ``scripts/export.py`` (:func:`save_pretrained`), read by ``scripts/predict.py``
(``ckpt_path=<folder>``, :func:`load_pretrained`). The folder is smp's own ``save_pretrained``
output -- the Hugging Face hub layout -- so ``segmentation_models_pytorch.from_pretrained(folder)``
also loads it, and it can be uploaded to a model page as is:

* ``model.safetensors``: the network's tensors (no pickle: loading cannot run code);
* ``config.json``: smp's constructor arguments (``_model_class``, ``encoder_name``,
  ``in_channels``, ``classes``, decoder options; ``encoder_weights`` is null because the
  weights are in the file) plus this project's ``_segtrain`` entry, which smp ignores
  (it drops keys starting with ``_``): ``task``, ``num_classes``, ``image_size``,
  ``preprocessing`` (the validation transforms as albumentations configs), ``input`` (channels,
  dtype and the normalisation applied after those transforms), ``inference`` (the sliding window
  validation used), ``size_multiple`` (height and width are zero-padded, bottom/right, up to a
  multiple of it: the network's stride) and ``versions``;
* ``README.md``: smp's model card.

``config.json`` is data from elsewhere like a checkpoint: its transforms pass the same
``_target_`` allow-list (segtrain/trust.py) before anything is built.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from .atomic import usual_permissions
from .sliding import STRIDE
from .trust import UntrustedCheckpointError, check_config_targets, recorded_versions, warn_version_mismatch

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Keys of smp's config.json that build_network takes under other names (or not at all).
_SMP_RESERVED = ("classes", "encoder_name", "encoder_weights", "in_channels")


def is_pretrained_folder(path: str | os.PathLike) -> bool:
    """A folder holding ``config.json`` and ``model.safetensors``."""
    path = os.fspath(path)
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isfile(os.path.join(path, WEIGHTS_FILE))


def save_pretrained(net: nn.Module, config: Mapping[str, Any], folder: str | os.PathLike,
                    preprocessing: Mapping[str, Any] | None = None, inference: Mapping[str, Any] | None = None,
                    postprocessing: Mapping[str, Any] | None = None) -> str:
    """Write ``net`` (an smp model) and what rebuilding it needs into ``folder``.

    Args:
        net: the trained network (built by segtrain.network.build_network).
        config: the training run's resolved config (``checkpoint["config"]``).
        folder: destination, created if missing.
        preprocessing: the input's channels, dtype and normalisation spec (``checkpoint["preprocessing"]``).
        inference: how validation inferred (``checkpoint["inference"]``: sliding window, overlap, blending,
            padding), ``None`` for whole (resized) images in one pass.
        postprocessing: the plan chosen on validation (``checkpoint["postprocessing"]``), ``None``: none.

    Returns:
        ``folder``.
    """
    if not hasattr(net, "save_pretrained"):
        raise ValueError(
            f"{type(net).__name__} has no save_pretrained: the safetensors folder needs a segmentation-models-pytorch "
            "network (model.arch / segtrain.network.build_network). Skip it with weights_dir=null."
        )
    folder = os.fspath(folder)
    net.save_pretrained(folder)
    for name in (WEIGHTS_FILE, CONFIG_FILE, "README.md"):  # safetensors leaves its file at 0600: the umask's, as the rest
        if os.path.isfile(file := os.path.join(folder, name)):
            usual_permissions(file)
    path = os.path.join(folder, CONFIG_FILE)
    with open(path) as f:
        smp_config = json.load(f)
    smp_config["encoder_weights"] = None  # the trained weights are in model.safetensors: nothing to download
    data = config.get("data") or {}
    smp_config["_segtrain"] = {
        "format": 1,
        "task": str(config["task"]),
        "num_classes": int(config["num_classes"]),
        "image_size": data.get("image_size"),
        "preprocessing": data.get("val_transforms"),
        # channels, channel_select, dtype and the normalisation spec (datamodules/normalization.py):
        # what a user outside the project needs to turn an image file into the network's input.
        "input": None if preprocessing is None else dict(preprocessing),
        "inference": None if inference is None else dict(inference),
        # chosen on validation at the end of training (segtrain/postprocessing.py), applied by predict
        "postprocessing": None if postprocessing is None else dict(postprocessing),
        # validation pads height and width (bottom/right, zeros) up to a multiple of this before the network
        "size_multiple": STRIDE,
        "versions": recorded_versions(),
    }
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(smp_config, f, indent=2)  # unsorted: the transforms apply in their order
    os.replace(tmp, path)
    return folder


def _arch_name(model_class: Any, source: str) -> str:
    import segmentation_models_pytorch as smp

    for name, cls in smp.MODEL_ARCHITECTURES_MAPPING.items():
        if cls.__name__ == model_class:
            return name
    raise UntrustedCheckpointError(
        f"Refusing {source}: _model_class={model_class!r} is not a segmentation-models-pytorch architecture "
        f"({', '.join(c.__name__ for c in smp.MODEL_ARCHITECTURES_MAPPING.values())})."
    )


def read_pretrained(folder: str | os.PathLike, trust: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from an exported folder, with its weights.

    Returns:
        ``(net, config)`` where ``config`` has the checkpoint-config keys predict reads:
        ``task``, ``num_classes``, ``model``, ``data.image_size``, ``data.val_transforms``.

    Raises:
        ValueError: the folder was not written by scripts/export.py, or its classes disagree with its task.
        UntrustedCheckpointError: a transform off the allow-list (unless ``trust``).
    """
    from safetensors.torch import load_file

    from .network import build_network
    from .task import out_channels

    folder = os.fspath(folder)
    source = os.path.join(folder, CONFIG_FILE)
    with open(source) as f:
        smp_config = json.load(f)
    meta = smp_config.get("_segtrain")
    if not isinstance(meta, Mapping) or "task" not in meta:
        raise ValueError(
            f"{source} has no _segtrain entry (task, preprocessing), so it was not written by scripts/export.py. "
            "Load a plain segmentation-models-pytorch folder with segmentation_models_pytorch.from_pretrained."
        )
    if not trust:
        check_config_targets(smp_config, source, "config.json")
    warn_version_mismatch(meta.get("versions"), folder)
    task, num_classes = str(meta["task"]), int(meta["num_classes"])
    model = {k: v for k, v in smp_config.items() if not k.startswith("_") and k not in _SMP_RESERVED}
    model.update(arch=_arch_name(smp_config.get("_model_class"), source), encoder_name=smp_config["encoder_name"],
                 in_channels=int(smp_config.get("in_channels", 3)))
    if int(smp_config.get("classes", -1)) != out_channels(task, num_classes):
        raise ValueError(f"{source}: classes={smp_config.get('classes')} does not fit task={task}, num_classes={num_classes}.")
    net = build_network(task=task, num_classes=num_classes, encoder_weights=None, **model)
    net.load_state_dict(load_file(os.path.join(folder, WEIGHTS_FILE), device="cpu"))
    config = {
        "task": task,
        "num_classes": num_classes,
        "model": model,
        "data": {"image_size": meta.get("image_size"), "val_transforms": meta.get("preprocessing")},
        "preprocessing": meta.get("input"),
        "inference": meta.get("inference"),
        "postprocessing": meta.get("postprocessing"),
    }
    return net, config
