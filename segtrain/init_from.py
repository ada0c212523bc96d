"""``init_from``: start a NEW run from the network weights of an earlier model (fine-tuning).

``ckpt_path`` resumes a run: same config, its optimizer, its epoch counter. ``init_from`` only
copies network tensors -- from a ``.ckpt``, a run folder (its best checkpoint, else
``last.ckpt``) or a folder written by ``scripts/export.py`` -- into a freshly built network and
then trains as any new run (new folder, new optimizer, epoch 0). This is what nnU-Net's
``-pretrained_weights`` and mmsegmentation's ``load_from`` do.

Tensors are matched by name and shape, so the config may differ from the source's: another
``num_classes`` or task re-initialises the segmentation head, other ``in_channels`` the first
convolution, and everything else is kept. The log says what was loaded, re-initialised and
ignored, because a silent partial load (nothing matched, head kept by accident) is the classic
fine-tuning bug. ``init_from_exclude`` (a regex over tensor names) drops tensors on purpose.

The source is data from elsewhere like any checkpoint: read with ``weights_only=True`` (or
safetensors), and its stored config passes the ``_target_`` allow-list unless
``trust_checkpoint=true`` (segtrain/trust.py) -- although nothing is built from it here, the
rule is the same for every file so that "is this file safe to pass?" has one answer.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .inference import _run_checkpoint, network_state
from .pretrained import CONFIG_FILE, WEIGHTS_FILE, is_pretrained_folder
from .trust import check_config_targets, load_checkpoint

log = logging.getLogger(__name__)

#: How many names each list of the report shows in the log (and an error shows of each side).
SHOWN = 10
_UNSET = (None, "", "null", "None")


def _given(value: Any) -> bool:
    return value is not None and str(value).strip() not in _UNSET


def check_init_keys(cfg: Any) -> None:
    """Start-up checks without files: ``init_from`` with ``ckpt_path`` (one starts a new run, the other
    resumes one), ``init_from_exclude`` without ``init_from`` (it would do nothing), a bad regex.

    Raises:
        ValueError: naming the keys and the fix.
    """
    init_from, ckpt_path = cfg.get("init_from"), cfg.get("ckpt_path")
    exclude = cfg.get("init_from_exclude")
    if _given(exclude) and not _given(init_from):
        raise ValueError(f"init_from_exclude={exclude!r} was given without init_from, so it would drop nothing. "
                         "Give init_from=<.ckpt | run folder | exported folder> too, or leave init_from_exclude out.")
    _exclude_pattern(exclude)
    if _given(init_from) and _given(ckpt_path):
        raise ValueError(
            f"init_from={init_from} and ckpt_path={ckpt_path} were both given. ckpt_path resumes a run (its "
            "optimizer, epoch and config); init_from starts a new run from another model's network weights. "
            "Keep one: to continue an interrupted fine-tuning run, give only ckpt_path (its weights, optimizer and "
            "epoch are in its checkpoint); to fine-tune, give only init_from."
        )


def resolve_init_source(init_from: Any) -> str | None:
    """The file or exported folder ``init_from`` names; ``None`` when not set.

    A run folder means its best checkpoint (``checkpoints/best*.ckpt``, newest), else
    ``checkpoints/last.ckpt`` -- the model predict would use (segtrain.inference).

    Raises:
        FileNotFoundError: the path does not exist, or is a folder holding no model.
    """
    if not _given(init_from):
        return None
    text = os.path.expanduser(str(init_from).strip())
    path = os.path.abspath(text)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"init_from={text} does not exist (resolved to {path}). Give a .ckpt file, a run folder (its best "
            "checkpoint, else checkpoints/last.ckpt) or a folder written by scripts/export.py."
        )
    if not os.path.isdir(path) or is_pretrained_folder(path):
        return path
    found = _run_checkpoint(path)
    if found is None:
        raise FileNotFoundError(
            f"init_from={text} is a folder without a model: no checkpoints/best*.ckpt or checkpoints/last.ckpt "
            f"(a run folder) and no {CONFIG_FILE} + {WEIGHTS_FILE} (scripts/export.py). Give a run folder that "
            "saved a checkpoint, the .ckpt file itself, or an exported folder."
        )
    return found


def _tensors(mapping: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {str(k): v for k, v in mapping.items() if isinstance(v, torch.Tensor)}


def load_init_state(source: str, trust: bool = False) -> dict[str, torch.Tensor]:
    """The network tensors of ``source`` (from :func:`resolve_init_source`), read as data only.

    Accepts an exported folder (``model.safetensors``; ``config.json`` checked like predict does),
    a ``.safetensors`` file, a Lightning checkpoint of this project (its ``net.`` tensors) or a plain
    state dict (``torch.save(net.state_dict())``).

    Raises:
        UntrustedCheckpointError: pickled objects, or a ``_target_`` off the allow-list (unless ``trust``).
        ValueError: a file that is no checkpoint, or holds no tensors.
    """
    from safetensors.torch import load_file

    from .resume import check_checkpoint_file

    if os.path.isdir(source):
        if not trust:
            with open(os.path.join(source, CONFIG_FILE)) as f:
                check_config_targets(json.load(f), os.path.join(source, CONFIG_FILE), "config.json")
        state = load_file(os.path.join(source, WEIGHTS_FILE), device="cpu")
    elif source.endswith(".safetensors"):
        state = load_file(source, device="cpu")
    else:
        check_checkpoint_file(source)  # a truncated or foreign file: one line, not torch's traceback
        checkpoint = load_checkpoint(source, trust=trust)
        if not isinstance(checkpoint, Mapping):
            raise ValueError(f"init_from={source} holds a {type(checkpoint).__name__}, not a checkpoint or state dict.")
        inner = checkpoint.get("state_dict")
        if isinstance(inner, Mapping):
            state = network_state(inner) or _tensors(inner)  # this project's LightningModule keeps the net under net.
        else:
            state = _tensors(checkpoint)
    state = _tensors(state)
    if not state:
        raise ValueError(
            f"init_from={source} holds no tensors. Give a checkpoint written by train.py, a run folder or a "
            "folder written by scripts/export.py."
        )
    return state


@dataclass
class InitReport:
    """What :func:`apply_init` did: names loaded, re-initialised (with both shapes), excluded, ignored."""

    loaded: list[str] = field(default_factory=list)
    #: ``(name, source shape, network shape)``: same name, another shape; the network keeps its fresh tensor.
    reinitialised: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # matched init_from_exclude
    ignored: list[str] = field(default_factory=list)  # in the source, not in the network
    missing: list[str] = field(default_factory=list)  # in the network, not in the source: fresh
    first_conv: str | None = None  # set when the first convolution was re-initialised (in_channels differ)

    def lines(self) -> list[str]:
        """The log lines: counts, then up to :data:`SHOWN` names per list."""
        out = [f"init_from: {len(self.loaded)} tensors loaded, {len(self.reinitialised)} re-initialised (other shape), "
               f"{len(self.excluded)} excluded (init_from_exclude), {len(self.ignored)} in the source ignored (not in "
               f"this network), {len(self.missing)} of this network not in the source (freshly initialised)"]
        if self.reinitialised:
            shown = ", ".join(f"{n} {list(a)} -> {list(b)}" for n, a, b in self.reinitialised[:SHOWN])
            out.append(f"init_from: re-initialised (source shape -> this network's): {shown}{_more(self.reinitialised)}")
        if self.first_conv:
            out.append(f"init_from: the first convolution {self.first_conv} is re-initialised: this run's in_channels "
                       "differ from the source's, so its pretrained input kernel cannot be used")
        for what, names in (("excluded", self.excluded), ("ignored", self.ignored), ("not in the source", self.missing)):
            if names:
                out.append(f"init_from: {what}: {', '.join(names[:SHOWN])}{_more(names)}")
        return out


def _more(items: list[Any]) -> str:
    return f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""


def _first_conv(own: Mapping[str, torch.Tensor]) -> str | None:
    """The network's first 4-D (or 5-D) weight in definition order: the input convolution."""
    return next((n for n, t in own.items() if t.ndim in (4, 5) and n.endswith("weight")), None)


def _exclude_pattern(exclude: Any) -> re.Pattern[str] | None:
    try:
        return re.compile(str(exclude)) if _given(exclude) else None
    except re.error as err:
        raise ValueError(f"init_from_exclude={exclude!r} is not a regular expression ({err}). Give one over tensor "
                         "names, e.g. 'init_from_exclude=\"^segmentation_head\"'.") from None


def apply_init(
    net: nn.Module, state: Mapping[str, torch.Tensor], exclude: str | None = None, source: str = "init_from"
) -> InitReport:
    """Copy the tensors of ``state`` whose name and shape match into ``net``; the rest stay as built.

    Args:
        net: the freshly built network.
        state: the source's tensors (:func:`load_init_state`).
        exclude: a regex (``re.search``) over tensor names dropped on purpose, e.g. ``^segmentation_head``.
        source: the path, for messages.

    Raises:
        ValueError: a bad regex, or nothing loaded at all (naming a few keys of each side).
    """
    pattern = _exclude_pattern(exclude)
    own = net.state_dict()
    report = InitReport()
    matched: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name not in own:
            report.ignored.append(name)
        elif pattern is not None and pattern.search(name):
            report.excluded.append(name)
        elif tuple(tensor.shape) != tuple(own[name].shape):
            report.reinitialised.append((name, tuple(tensor.shape), tuple(own[name].shape)))
        else:
            matched[name] = tensor
    report.loaded = list(matched)
    report.missing = [n for n in own if n not in state]
    first = _first_conv(own)
    if first is not None and any(n == first for n, _, _ in report.reinitialised):
        report.first_conv = first
    if not matched:
        hint = (f" init_from_exclude={exclude!r} dropped {len(report.excluded)} of them." if report.excluded else "")
        raise ValueError(
            f"init_from={source}: no tensor matches this network by name and shape, so nothing would be loaded.{hint} "
            f"The source has {', '.join(list(state)[:5]) or 'no tensors'}; this network has {', '.join(list(own)[:5])}. "
            "Give a model of the same architecture (model.arch, model.encoder_name) trained by this project."
        )
    with torch.no_grad():
        for name, tensor in matched.items():
            own[name].copy_(tensor)  # state_dict() tensors share storage with the parameters and buffers
    for line in report.lines():
        log.info(line)
    return report


def init_source_from_config(cfg: Any) -> tuple[str, dict[str, torch.Tensor]] | None:
    """Start-up step of ``train``: the checked, loaded ``init_from`` source, before any data is read.

    Returns:
        ``(path, tensors)``, or ``None`` when ``init_from`` is not set.
    """
    check_init_keys(cfg)
    source = resolve_init_source(cfg.get("init_from"))
    if source is None:
        return None
    state = load_init_state(source, trust=bool(cfg.get("trust_checkpoint", False)))
    log.info("Initialising the network from %s (init_from; a new run: fresh optimizer, epoch 0)", source)
    return source, state
