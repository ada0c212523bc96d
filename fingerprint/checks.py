"""The config checked against the fingerprint: every problem named at once, before training starts.

Why: a mismatch between the config and the data (a 0/255 mask with ``ignore_index=255``, a
JPEG mask, ``model.in_channels=3`` on 4-channel TIFFs) otherwise fails on one sample mid-epoch,
or -- worse -- trains silently to nothing. :func:`check_fingerprint` resolves ``task=auto`` /
``num_classes=auto`` / ``in_channels=None`` from the data, then runs every check and raises one
``ValueError`` holding one paragraph per failing check (the problem, up to 5 example files, the
fix), so a user fixes everything in one go. Findings that do not stop a run (a class in no
training image, a constant channel) come back as ``warnings``; facts worth a line (greyscale
images repeated to RGB, what ``auto`` resolved to) as ``notes``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamodules.masks import validate_task

#: Example files named per problem.
SHOWN = 5


@dataclass
class Resolved:
    """What the run trains with, ``auto`` and ``None`` resolved from the data.

    ``class_names``: one name per metric channel as ``data.class_names`` takes them (binary: the
    foreground; multiclass: every class, the background first; multilabel: every label).
    """

    task: str
    num_classes: int
    in_channels: int
    class_names: list[str] | None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _files(paths: Sequence[str], total: int | None = None) -> str:
    """``a.png, b.png (+ 7 more)``: up to :data:`SHOWN` files of ``total``."""
    total = len(paths) if total is None else total
    shown = ", ".join(str(p) for p in list(paths)[:SHOWN])
    return shown + (f" (+ {total - min(len(paths), SHOWN)} more)" if total > min(len(paths), SHOWN) else "")


def _set(values: Sequence[int], limit: int = 10) -> str:
    values = list(values)
    text = ", ".join(str(v) for v in values[:limit])
    return "{" + text + (f", ... ({len(values)} values)" if len(values) > limit else "") + "}"


def _value_files(masks: dict[str, Any], values: Sequence[int]) -> list[str]:
    """Example mask files holding any of ``values`` (each value's first files, then the next value's)."""
    out: list[str] = []
    for v in values:
        for f in masks["files"].get(str(v), []):
            if f not in out:
                out.append(f)
    return out


# --- task, num_classes, class names ---------------------------------------------------------------


def _binary_problems(masks: dict[str, Any], ignore: int | None) -> tuple[list[int], list[dict[str, Any]]]:
    """``(values of no binary class, value sets mixing 1 and full)`` under the per-file rule.

    A binary mask file holds (besides ``ignore``) 0/1 or 0/full, full being its own "on" value
    (255 for 8-bit files, 65535 for 16-bit ones), as :func:`datamodules.masks.binary_values`
    decodes it.
    """
    allowed = {0, 1, *masks["full"]} | ({ignore} if ignore is not None else set())
    bad = {v for v in masks["values"] if v not in allowed}
    mixed = []
    for entry in masks["value_sets"]:
        labels = set(entry["values"]) - {ignore}
        if labels <= {0, 1} or labels <= {0, entry["full"]}:
            continue
        extra = labels - {0, 1, entry["full"]}
        if extra:
            bad |= extra
        else:
            mixed.append(entry)
    return sorted(bad), mixed


def _auto_task(masks: dict[str, Any], ignore: int | None) -> str:
    bad, mixed = _binary_problems(masks, ignore)
    return "binary" if not bad and not mixed else "multiclass"


def _labels(masks: dict[str, Any], ignore: int | None) -> list[int]:
    return [v for v in masks["values"] if v != ignore]


def _auto_classes(fp: dict[str, Any], task: str, ignore: int | None) -> int:
    masks = fp["masks"]
    if task == "binary":
        return 1
    if task == "multilabel":
        counts = masks["files_per_image"]
        if len(counts) != 1 or counts[0] < 1:
            raise ValueError(
                f"num_classes=auto cannot be resolved for task=multilabel: the images have {counts} mask files "
                "each (masks/<stem>_<k> for k = 0..num_classes-1). Set num_classes explicitly."
            )
        return counts[0]
    return max(2, max(_labels(masks, ignore), default=0) + 1)


def _read_labels_file(path: str | Path) -> list[str]:
    """Class names from ``labels.txt`` (one a line, class 0 first) or ``labels.json`` (a list, or name -> value)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"Cannot read the labels file {path}: {e}. Give an existing labels.txt or labels.json.") from e
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f"The labels file {path} is not valid JSON ({e}): write a list of class names, "
                             'class 0 first, or {"name": value, ...}.') from e
        if isinstance(data, list):
            return [str(n) for n in data]
        if isinstance(data, dict):
            by_value = {}
            for name, value in data.items():
                if isinstance(value, bool) or not isinstance(value, int) or value in by_value:
                    raise ValueError(f"The labels file {path} maps {name!r} to {value!r}: every name needs its own "
                                     "integer mask value, 0 .. num_classes-1.")
                by_value[value] = str(name)
            missing = [v for v in range(len(by_value)) if v not in by_value]
            if missing:
                raise ValueError(f"The labels file {path} names values {sorted(by_value)} but not {missing}: "
                                 "give every class 0 .. num_classes-1 a name (the background 0 too).")
            return [by_value[v] for v in range(len(by_value))]
        raise ValueError(f"The labels file {path} holds a {type(data).__name__}: write a list of class names, "
                         'class 0 first, or {"name": value, ...}.')
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines or any(not line for line in lines):
        raise ValueError(f"The labels file {path} has empty lines: write one class name per line, class 0 first, "
                         "no blank line in between (a blank line would shift every later class).")
    return lines


def _class_names(names, labels_file, task: str, num_classes: int,
                 notes: list[str]) -> tuple[list[str] | None, str | None]:
    """``(names fitting num_classes, error paragraph)``; binary also takes [background, foreground]."""
    source = "class_names"
    if names is None and labels_file is not None:
        try:
            names = _read_labels_file(labels_file)
        except ValueError as e:
            return None, str(e)
        source = f"the labels file {labels_file}"
    if names is None:
        return None, None
    names = [str(n) for n in names]
    if task == "binary" and len(names) == 2:
        notes.append(f"{source}: {names[0]!r} is the background, {names[1]!r} the foreground class")
        return names[1:], None
    if len(names) != num_classes:
        need = "1 (the foreground)" if task == "binary" else (
            f"{num_classes} (the background first)" if task == "multiclass" else f"{num_classes} (one per label)")
        return None, (f"{source} has {len(names)} names {names[:8]} but task={task} num_classes={num_classes} needs "
                      f"{need}: fix the names, or num_classes.")
    return names, None


# --- the checks ------------------------------------------------------------------------------------


def _unreadable(masks: dict[str, Any]) -> str | None:
    rows = masks["unreadable"]
    if not rows:
        return None
    shown = "; ".join(f"{f}: {msg}" for f, msg in rows[:SHOWN])
    more = f" (+ {len(rows) - SHOWN} more)" if len(rows) > SHOWN else ""
    return (f"{len(rows)} file(s) cannot be read: {shown}{more}. Fix or remove them (a truncated copy, a file that "
            "is no image, a colour mask without data.palette) and start again.")


def _lossy(masks: dict[str, Any]) -> str | None:
    files = masks["lossy"]
    if not files:
        return None
    return (f"{len(files)} mask(s) are JPEG files ({_files(files)}): masks must be lossless (PNG/TIFF): JPEG "
            "compression noise creates values of no class; re-save the masks as PNG from the original labels "
            "(converting the JPEG keeps its noise).")


def _mismatches(masks: dict[str, Any]) -> str | None:
    rows = masks["size_mismatches"]
    if not rows:
        return None
    shown = "; ".join(f"image {i} is {hi}x{wi} but mask {m} is {hm}x{wm}" for i, m, (hi, wi), (hm, wm) in rows[:SHOWN])
    more = f" (+ {len(rows) - SHOWN} more)" if len(rows) > SHOWN else ""
    return (f"{len(rows)} mask(s) differ in size from their image (HxW): {shown}{more}. A mask labels its image "
            "pixel for pixel: export the masks at the images' resolution, or check that image and mask share the "
            "file stem of the same picture.")


def _greys_among_rgb(images: dict[str, Any]) -> int:
    """How many 1-channel uint8 images sit among 3-channel uint8 ones (else 0): they are repeated, not refused."""
    layouts = images.get("layouts", {})
    if set(layouts) == {"1 uint8", "3 uint8"}:
        return layouts["1 uint8"]
    return 0


def _data_channels(images: dict[str, Any]) -> tuple[int | None, str | None]:
    """``(channel count the data gives the network, its dtype)``: the majority, greys folded into RGB."""
    counts = {int(c): n for c, n in images["channels"].items()}
    if not counts:
        return None, None
    if _greys_among_rgb(images):
        return 3, "uint8"
    channels = max(counts, key=lambda c: (counts[c], c))
    layouts = {k: n for k, n in images.get("layouts", {}).items() if k.split(" ")[0] == str(channels)}
    dtype = max(layouts, key=layouts.get).split(" ")[1] if layouts else None
    return channels, dtype


def _channel_counts(images: dict[str, Any], select: list[int] | None, notes: list[str]) -> str | None:
    counts = {int(c): n for c, n in images["channels"].items()}
    examples = images["examples"]["channels"]
    if select is not None:
        need = max(select) + 1
        short = sorted(c for c in counts if c < need)
        if not short:
            return None
        shown = "; ".join(f"{counts[c]} with {c} channel(s), e.g. {_files(examples[str(c)], counts[c])}" for c in short)
        return (f"data.channels={list(select)} selects channel {need - 1}, but some images have fewer channels: "
                f"{shown}. Pick channels every image has, or convert those images.")
    if len(counts) <= 1:
        return None
    greys = _greys_among_rgb(images)
    if greys:
        notes.append(f"{greys} greyscale image(s) among {counts[3]} RGB ones are repeated to 3 channels "
                     f"(e.g. {_files(examples['1'], greys)})")
        return None
    shown = "; ".join(f"{c} channel(s): {n} image(s), e.g. {_files(examples[str(c)], n)}"
                      for c, n in sorted(counts.items()))
    common = ", ".join(map(str, range(min(counts))))
    return (f"The images have different channel counts -- {shown}. Every image of a run needs the same channels: "
            f"convert them to one layout, or keep common channels with data.channels=[{common}].")


def _binary_values(masks: dict[str, Any], task: str, ignore: int | None) -> str | None:
    bad, mixed = _binary_problems(masks, ignore)
    if not bad and not mixed:
        return None
    what = "a binary" if task == "binary" else "a multilabel (one binary mask per label)"
    parts = []
    if bad:
        files = _value_files(masks, bad)
        top = max(_labels(masks, ignore), default=0)
        parts.append(
            f"Mask values {_set(bad)} fit no class of {what} task (a mask file holds 0/1 or 0/255, 0/65535 in 16-bit "
            f"files{'' if ignore is None else f', plus ignore_index={ignore}'}), e.g. in {_files(files)}. Fixes: an "
            f"index mask of several classes is task=multiclass num_classes={top + 1} (or num_classes=auto); a value "
            f"marking unlabelled pixels is ignore_index=V (e.g. ignore_index={bad[-1]}); colour masks need "
            "data.palette; anti-aliased masks (soft edges between 0 and 255) must be thresholded (e.g. > 127 -> 255).")
    if mixed:
        files = [f for entry in mixed for f in entry["files"]]
        count = sum(entry["count"] for entry in mixed)
        full = mixed[0]["full"]
        parts.append(
            f"{count} mask file(s) hold 0, 1 and {full} together (e.g. {_files(files, count)}): a binary mask is 0/1 "
            f"or 0/{full}. If {full} marks unlabelled pixels, set ignore_index={full}; if it is a class, "
            f"use task=multiclass num_classes={max(_labels(masks, ignore), default=0) + 1}.")
    return " ".join(parts)


def _index_values(masks: dict[str, Any], num_classes: int, ignore: int | None) -> str | None:
    bad = [v for v in _labels(masks, ignore) if v < 0 or v >= num_classes]
    if not bad:
        return None
    top = max(_labels(masks, ignore))
    more = (f"if they are classes, task=multiclass num_classes={top + 1} (or num_classes=auto); "
            if top >= num_classes else "negative values are never classes; ")
    return (f"Mask values {_set(bad)} fit no class of task=multiclass num_classes={num_classes} (0..{num_classes - 1}"
            f"{'' if ignore is None else f', plus ignore_index={ignore}'}), "
            f"e.g. in {_files(_value_files(masks, bad))}. "
            f"Fixes: {more}a value marking unlabelled pixels is ignore_index=V (e.g. ignore_index={bad[-1]}); "
            "colour masks need data.palette; anti-aliased masks (soft edges) must be re-exported without smoothing.")


def _multilabel_files(masks: dict[str, Any], num_classes: int) -> str | None:
    counts = masks["files_per_image"]
    if not counts or counts == [num_classes]:
        return None
    return (f"task=multilabel num_classes={num_classes} pairs each image with {num_classes} masks <stem>_0 .. "
            f"<stem>_{num_classes - 1}, but the images have {counts} mask file(s): set num_classes to the number of "
            "label masks per image.")


def _ignore_conflict(masks: dict[str, Any], task: str, num_classes: int, ignore: int | None) -> str | None:
    if ignore is None:
        return None
    if task == "multiclass" and 0 <= ignore < num_classes:
        return (f"ignore_index={ignore} is also class {ignore} of task=multiclass num_classes={num_classes} "
                f"(0..{num_classes - 1}): its pixels would be both trained and ignored. Use a value no class uses "
                "(e.g. ignore_index=255), or drop ignore_index.")
    if task == "multiclass":
        return None
    if ignore in (0, 1):
        return (f"ignore_index={ignore} is a class value of task={task} (0 background, 1 foreground): use a value no "
                "mask uses as a class (e.g. ignore_index=255), or drop ignore_index.")
    values = set(masks["values"])
    if ignore in masks["full"] and ignore in values and 1 not in values:
        example = _files(masks["files"].get(str(ignore), []))
        return (f"ignore_index={ignore} is also the foreground: the {task} masks hold only 0 and {ignore} (e.g. "
                f"{example}), so every foreground pixel would be ignored and the network never sees the foreground "
                f"(it trains to Dice 0.0 without an error). Drop ignore_index (padding is excluded without it); "
                f"if {ignore} really marks unlabelled pixels, store the foreground as 1.")
    return None


def _in_channels(explicit: int | None, data: int | None, dtype: str | None, select) -> str | None:
    if explicit is None or data is None or int(explicit) == data:
        return None
    if select is not None:
        return (f"model.in_channels={explicit} but data.channels={list(select)} keeps {data} channel(s): set "
                f"model.in_channels={data} or leave it unset (null) to follow the data.")
    plural = "channel" if data == 1 else "channels"
    return (f"model.in_channels={explicit} but the images have {data} {plural} ({dtype}): set "
            f"model.in_channels={data} or leave it unset (null) to follow the data.")


# --- warnings ----------------------------------------------------------------------------------------


def _absent_classes(fp: dict[str, Any], task: str, num_classes: int, ignore: int | None,
                    names: list[str] | None) -> str | None:
    masks = fp["masks"]
    if not fp["splits"].get("train"):
        return None
    present = {int(v) for v, n in masks["train_images"].items() if n > 0} - ({ignore} if ignore is not None else set())
    if task == "binary":
        if present & ({1} | set(masks["full"])):
            return None
        name = f" ({names[0]})" if names else ""
        return (f"The foreground{name} is in no training mask (every training mask is background only): the "
                "network learns to predict nothing.")
    if task == "multiclass":
        absent = [k for k in range(1, num_classes) if k not in present and k != ignore]
        label = lambda k: f"{k} ({names[k]})" if names else str(k)  # noqa: E731
    else:
        absent = []
        for k in range(num_classes):
            seen = masks["labels"].get(str(k), {}).get("values", {})
            if not any(int(v) not in (0, ignore) and n > 0 for v, n in seen.items()):
                absent.append(k)
        label = lambda k: f"{k} ({names[k]})" if names else str(k)  # noqa: E731
    if not absent:
        return None
    what = "class(es)" if task == "multiclass" else "label(s)"
    shown = ", ".join(label(k) for k in absent[:10]) + (f", ... ({len(absent)} in all)" if len(absent) > 10 else "")
    return (f"{what} {shown} appear in no training mask: the network never learns them (their validation Dice is "
            "0 or undefined). Check num_classes and the split, or add training images holding them.")


def _constant_channels(fp: dict[str, Any], select: list[int] | None) -> list[str]:
    intensity = fp["intensity"]
    constant = intensity.get("constant_channels", [])
    channels = intensity.get("sampled_channels") or 0
    out = []
    for c in constant:
        if select is not None and c not in select:
            continue
        keep = [k for k in (select if select is not None else range(channels)) if k != c]
        out.append(f"channel {c} is constant in every sampled pixel (an unused alpha channel?): "
                   f"data.channels=[{','.join(map(str, keep))}] drops it")
    return out


def _auto_gap(masks: dict[str, Any], ignore: int | None) -> str | None:
    """``num_classes=auto`` made huge by one value far above the rest (255 as 'unlabelled')."""
    labels = _labels(masks, ignore)
    if len(labels) < 2 or labels[-1] not in (255, 65535) or labels[-2] >= labels[-1] // 2:
        return None
    v = labels[-1]
    return (f"num_classes=auto gives {v + 1} because the masks hold value {v} (e.g. "
            f"{_files(masks['files'].get(str(v), []))}) far above the others {_set(labels[:-1])}: if {v} marks "
            f"unlabelled pixels, set ignore_index={v}.")


# --- the entry point ---------------------------------------------------------------------------------


def check_fingerprint(
    fp: dict[str, Any],
    *,
    task: str,
    num_classes: int | str,
    ignore_index: int | None = None,
    in_channels: int | None = None,
    class_names: Sequence[str] | None = None,
    labels_file: str | Path | None = None,
    channels: Sequence[int] | None = None,
) -> Resolved:
    """Resolve ``auto`` settings from the data and check the config against it (module docstring).

    Args:
        fp: :func:`~fingerprint.compute_fingerprint`'s dict.
        task: ``binary`` | ``multiclass`` | ``multilabel`` | ``auto`` (binary when the mask values
            other than ``ignore_index`` are 0/1 or 0/full per file, else multiclass; multilabel is
            never guessed: it needs num_classes to pair the files).
        num_classes: an int, or ``auto`` (binary: 1; multiclass: the largest value other than
            ``ignore_index`` + 1; multilabel: the mask files per image).
        ignore_index: the value marking unlabelled pixels, or ``None``.
        in_channels: ``model.in_channels``; ``None`` follows the data.
        class_names: names, one per class (multiclass: the background first; binary: the
            foreground, or [background, foreground]); ``None``: from ``labels_file`` if given.
        labels_file: ``labels.txt`` (one name a line, class 0 first) or ``labels.json`` (a list, or
            ``{"name": value}``).
        channels: ``data.channels``, the channels kept from each file, or ``None`` (all).

    Raises:
        ValueError: one paragraph per failing check (unreadable files, JPEG masks, size
            mismatches, channel counts, mask values, ignore_index conflicts, in_channels, class
            names), each naming example files and the fix.
    """
    masks, images = fp["masks"], fp["images"]
    ignore = None if ignore_index is None else int(ignore_index)
    select = None if channels is None else [int(c) for c in channels]
    notes: list[str] = []
    if task == "auto":
        task = _auto_task(masks, ignore)
        notes.append(f"task=auto -> {task} (mask values {_set(masks['values'])})")
    auto_classes = num_classes == "auto"
    if auto_classes:
        num_classes = _auto_classes(fp, task, ignore)
        notes.append(f"num_classes=auto -> {num_classes}")
    validate_task(task, num_classes)
    data_channels, dtype = _data_channels(images)
    if select is not None:
        data_channels = len(select)
    names, names_error = _class_names(class_names, labels_file, task, num_classes, notes)

    errors = [_unreadable(masks), _lossy(masks), _mismatches(masks), _channel_counts(images, select, notes)]
    if task == "multiclass":
        errors.append(_index_values(masks, num_classes, ignore))
    else:
        errors.append(_binary_values(masks, task, ignore))
        if task == "multilabel":
            errors.append(_multilabel_files(masks, num_classes))
    errors += [_ignore_conflict(masks, task, num_classes, ignore),
               _in_channels(in_channels, data_channels, dtype, select), names_error]
    errors = [e for e in errors if e]
    if errors:
        head = f"The dataset does not fit the config (task={task} num_classes={num_classes}"
        head += f", ignore_index={ignore})" if ignore is not None else ")"
        raise ValueError(head + f": {len(errors)} problem(s).\n\n" + "\n\n".join(errors))

    warnings = [w for w in (_absent_classes(fp, task, num_classes, ignore, names),
                            _auto_gap(masks, ignore) if auto_classes and task == "multiclass" else None) if w]
    warnings += _constant_channels(fp, select)
    resolved_channels = int(in_channels) if in_channels is not None else data_channels
    if resolved_channels is None:
        raise ValueError("No image could be read, so in_channels cannot follow the data: set model.in_channels.")
    return Resolved(task, int(num_classes), resolved_channels, names, warnings, notes)
