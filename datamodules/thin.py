"""Generated images of odd, non-square sizes with thin branching structures (binary masks).

The data the native-resolution path is for: 1-3 px wide lines, which a resize to a small
square thins out of existence. Used by the tests and by scripts/compare_crop_resize.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def thin_sample(rng: np.random.Generator, height: int, width: int, branches: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8 [H, W, 3], mask uint8 [H, W] in {0, 1})``: a noisy background with thin random polylines."""
    mask_img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask_img)
    for _ in range(branches):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(3, 8))):
            angle += rng.normal(0, 0.6)
            step = rng.uniform(0.1, 0.3) * max(height, width)
            nx, ny = x + step * np.cos(angle), y + step * np.sin(angle)
            draw.line([(x, y), (nx, ny)], fill=1, width=int(rng.integers(1, 4)))
            x, y = nx, ny
    mask = np.array(mask_img, dtype=np.uint8)
    background = rng.normal(120, 25, size=(height, width, 1)) + rng.normal(0, 10, size=(1, 1, 3))
    image = background + mask[..., None] * rng.uniform(35, 60)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_thin_dataset(root: Path, sizes: Sequence[tuple[int, int]], seed: int = 0, split: str = "") -> Path:
    """Write ``root[/split]/images/<i>.png`` + ``masks/<i>.png`` (0/1), one per ``(height, width)``."""
    rng = np.random.default_rng(seed)
    base = Path(root) / split if split else Path(root)
    for sub in ("images", "masks"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        image, mask = thin_sample(rng, h, w)
        Image.fromarray(image).save(base / "images" / f"s{i:03d}.png")
        Image.fromarray(mask).save(base / "masks" / f"s{i:03d}.png")
    return Path(root)
