"""The fingerprint for people: a few console lines at start-up, and ``fingerprint.json`` in the run folder.

Why: the start-up lines show at a glance what the run trains on (sizes, channels, value ranges,
class shares) -- a 16-bit image read as 8 bits or a class at 0.01 % of the pixels is visible
before the first epoch; the JSON keeps the full record next to the run's checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cache import write_json_atomic
from .scan import percentile_key

#: Channels whose percentiles are printed (13-band TIFFs would make the line unreadable).
SHOWN_CHANNELS = 4
#: Mask values whose pixel share is printed.
SHOWN_VALUES = 8


def _size(hw: list[int] | None) -> str:
    return "?" if hw is None else f"{hw[0]}x{hw[1]}"


def _number(v: float | None) -> str:
    return "?" if v is None else f"{v:.4g}"


def summary_lines(fp: dict[str, Any], resolved: Any = None) -> list[str]:
    """3-6 short lines describing the dataset (and the resolved task when ``resolved`` is given)."""
    images, intensity, masks = fp["images"], fp["intensity"], fp["masks"]
    splits = ", ".join(f"{n} {split}" for split, n in fp["splits"].items())
    sizes = images["sizes"]
    lines = [f"dataset: {splits} pairs"
             + (f"; sizes (HxW, per axis) min {_size(sizes['min'])}, median {_size(sizes['median'])}, "
                f"max {_size(sizes['max'])}" if sizes else "")]
    layouts = sorted(images.get("layouts", {}).items(), key=lambda kv: -kv[1])
    lines.append("images: " + (", ".join(f"{n} x {k.split(' ')[0]} channel(s) {k.split(' ')[1]}" for k, n in layouts)
                               or "none readable"))
    lo, hi = intensity["clip"]["percentiles"]
    low = intensity["percentiles"].get(percentile_key(lo), [])
    high = intensity["percentiles"].get(percentile_key(hi), [])
    if low:
        shown = ", ".join(f"ch{c} {_number(a)}..{_number(b)}"
                          for c, (a, b) in enumerate(zip(low[:SHOWN_CHANNELS], high)))
        more = f", +{len(low) - SHOWN_CHANNELS} more" if len(low) > SHOWN_CHANNELS else ""
        lines.append(f"intensity p{percentile_key(lo)}..p{percentile_key(hi)} ({intensity['images']} train images, "
                     f"{intensity['samples_per_image']} px each): {shown}{more}")
    total = sum(masks["pixels"].values())
    values = masks["values"]
    listed = ", ".join(map(str, values[:SHOWN_VALUES * 2])) + (", ..." if len(values) > SHOWN_VALUES * 2 else "")
    text = f"masks: values {{{listed}}}"
    if total:
        top = sorted(masks["pixels"].items(), key=lambda kv: -kv[1])[:SHOWN_VALUES]
        text += "; train pixels " + ", ".join(f"{v}: {100 * n / total:.2f}%" for v, n in top)
    lines.append(text)
    if resolved is not None:
        names = f", classes {resolved.class_names}" if resolved.class_names else ""
        lines.append(f"resolved: task={resolved.task} num_classes={resolved.num_classes} "
                     f"in_channels={resolved.in_channels}{names}")
    return lines


def write_fingerprint(fp: dict[str, Any], folder: str | Path) -> Path:
    """Write ``<folder>/fingerprint.json`` (indent 2, atomically) and return its path."""
    return write_json_atomic(Path(folder) / "fingerprint.json", fp)
