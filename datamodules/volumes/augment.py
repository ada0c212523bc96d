"""MONAI dictionary transforms built from config, and their random state.

A pipeline spec (``data.train_transforms`` / ``data.val_transforms``) is a list -- or a mapping
``name -> entry``, whose names only serve command-line overrides -- of entries that are each

* a MONAI dictionary transform already built (what Hydra hands over when it instantiates the
  whole ``data`` node),
* a dict / ``DictConfig`` with a ``_target_`` (instantiated here with ``hydra.utils.instantiate``),
* ``None``: left out (``data.train_transforms.3=null``).

The sample is ``{"image": float32 [C, *patch], "mask": [1, *patch]}`` (MONAI's channel-first
layout: spatial axis 0 is D); transforms name the keys they touch (geometric ones ``[image, mask]``,
intensity ones ``[image]``). A whole-volume distance map rides along *inside* ``mask``, as further
channels (:mod:`datamodules.volumes.dataset`), so every transform that moves the mask moves the
map with the same draw and the same per-key options (nearest interpolation, padding).

MONAI keeps a ``numpy.random.RandomState`` in every randomisable transform (and in the inner
transforms some of them wrap: ``RandGaussianNoised.rand_gaussian_noise`` ...);
:func:`random_state` / :func:`set_random_state` read and write all of them as plain lists, so a
checkpoint holds them and loads with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

Spec = Mapping[str, Any] | Sequence[Any] | None


def _entries(spec: Spec) -> list[tuple[str, Any]]:
    if spec is None:
        return []
    if isinstance(spec, Mapping):
        return [(str(k), v) for k, v in spec.items()]
    if isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)):
        return [(str(i), v) for i, v in enumerate(spec)]
    raise ValueError(f"data.train_transforms / data.val_transforms must be a list of MONAI dictionary transforms "
                     f"(or a mapping name -> transform), got {type(spec).__name__}: {spec!r}")


def _build(name: str, entry: Any, where: str) -> Any:
    from monai.transforms import MapTransform

    if isinstance(entry, Mapping):
        if "_target_" not in entry:
            raise ValueError(f"{where}[{name}] has no _target_ (keys {sorted(entry)}): give it e.g. "
                             "`_target_: monai.transforms.RandFlipd` with `keys: [image, mask]`, or null to drop it")
        from hydra.utils import instantiate  # lazily: built transforms need no Hydra

        # _convert_="all": list arguments as Python lists. Hydra's default hands ListConfigs to the transform,
        # which then reads them through OmegaConf on every call (a third of a millisecond per sample).
        built = instantiate(entry, _convert_="all")
        what = f"{where}[{name}] (_target_={entry['_target_']})"
    else:
        built, what = entry, f"{where}[{name}]"
    if not isinstance(built, MapTransform) and not callable(built):
        raise ValueError(f"{what} is a {type(built).__name__}, not a MONAI dictionary transform")
    if not isinstance(built, MapTransform):
        raise ValueError(f"{what} is {type(built).__name__}, not a MONAI *dictionary* transform: use the 'd' form "
                         "(e.g. monai.transforms.RandFlipd, not RandFlip) with keys [image, mask] or [image]")
    unknown = sorted(set(map(str, built.keys)) - {"image", "mask"})
    if unknown:
        raise ValueError(f"{what} names key(s) {unknown}: the samples hold 'image' and 'mask' only")
    return built


AXIS_OPTIONS = ("spatial_axis", "spatial_axes")


def _axes(entry: Any) -> list[Any]:
    """The spatial axes a transform names: a config entry's options, or a built transform's (MONAI keeps
    ``spatial_axes`` on RandRotate90d itself, ``spatial_axis`` on RandFlipd's inner ``flipper``)."""
    if isinstance(entry, Mapping):
        return [entry.get(k) for k in AXIS_OPTIONS]
    holders = [entry, *(v for v in vars(entry).values() if hasattr(v, "__dict__"))] if hasattr(entry, "__dict__") else []
    return [getattr(h, k, None) for h in holders for k in AXIS_OPTIONS]


def _beyond(entry: Any, spatial_dims: int) -> bool:
    """Whether a transform names a spatial axis the data lacks (a flip along D of a 2D dataset)."""
    flat = [a for v in _axes(entry) if v is not None
            for a in (v if isinstance(v, Sequence) and not isinstance(v, str) else [v])]
    return any(isinstance(a, int) and a >= spatial_dims for a in flat)


def build_pipeline(spec: Spec, where: str = "data.train_transforms", spatial_dims: int | None = None):
    """A ``monai.transforms.Compose`` of the spec's entries (module docstring), in order.

    ``spatial_dims=2``: the entries that name a third spatial axis (``spatial_axis: 2`` of the 3D
    defaults) are left out, so that conf/data/nnunet.yaml's defaults serve 2D datasets too; the
    names left out are in ``pipeline.left_out``.

    Raises:
        ValueError: an entry without ``_target_``, one that is not a MONAI dictionary transform,
            or a key other than ``image`` / ``mask`` -- naming the entry.
    """
    from monai.transforms import Compose

    kept, left_out = [], []
    for name, entry in _entries(spec):
        if entry is None:
            continue
        if spatial_dims is not None and _beyond(entry, spatial_dims):
            what = entry.get("_target_", "?") if isinstance(entry, Mapping) else type(entry).__name__
            left_out.append(f"{where}[{name}] ({what})")
            continue
        kept.append(_build(name, entry, where))
    pipeline = Compose(kept)
    pipeline.left_out = left_out
    return pipeline


def _randomizables(pipeline) -> Iterator[Any]:
    """Every ``Randomizable`` in ``pipeline`` and, one level down, the ones its transforms wrap, in a stable order."""
    from monai.transforms import Randomizable

    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> Iterator[Any]:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            yield obj
        if depth == 0:
            return
        children = getattr(obj, "transforms", None)
        if isinstance(children, (list, tuple)):
            for child in children:
                yield from walk(child, depth - 1)
        for value in vars(obj).values():
            if isinstance(value, Randomizable):
                yield from walk(value, depth - 1)

    yield from walk(pipeline, 3)


def random_state(pipeline) -> list[list[Any]]:
    """The state of every generator of ``pipeline`` as plain lists (``RandomState.get_state()``)."""
    out = []
    for t in _randomizables(pipeline):
        kind, keys, pos, has_gauss, gauss = t.R.get_state()
        out.append([kind, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)])
    return out


def set_random_state(pipeline, state: Sequence[Sequence[Any]]) -> bool:
    """Put back :func:`random_state`'s result; ``False`` (nothing set) when the pipeline has other transforms now."""
    targets = list(_randomizables(pipeline))
    if len(targets) != len(state):
        return False
    for t, (kind, keys, pos, has_gauss, gauss) in zip(targets, state):
        t.R.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(gauss)))
    return True


def reseed(pipeline, seed: int) -> None:
    """Seed every generator of ``pipeline`` from ``seed`` (MONAI's ``Compose.set_random_state``)."""
    pipeline.set_random_state(seed=int(seed) % 2**32)
