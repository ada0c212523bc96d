"""Albumentations pipelines built from config.

A pipeline is described by a mapping ``name -> transform`` (or a plain sequence), where each
value is either

* an already-built ``albumentations`` transform (what ``hydra.utils.instantiate`` hands over
  when it instantiates the whole ``data`` node recursively),
* a dict / ``DictConfig`` with a ``_target_`` (instantiated here with ``hydra.utils.instantiate``),
* ``None`` -- the transform is disabled (``data.train_transforms.hflip=null`` on the command line).

Names exist only so that every transform can be addressed from the command line
(``data.train_transforms.hflip.p=0.2``, ``~data.train_transforms.hflip``,
``+data.train_transforms.rot._target_=albumentations.RandomRotate90``). Transforms run in the
mapping's order; a transform added with ``+`` lands at the end, i.e. after ``normalize`` --
fine for geometric transforms, but put colour transforms before ``normalize``.

The datamodule appends ``ToTensorV2(transpose_mask=True)`` itself: images become float32
``[3, H, W]`` tensors and multi-channel (multilabel) masks ``[C, H, W]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import albumentations as A
from albumentations.pytorch import ToTensorV2

TransformSpec = Mapping[str, Any] | Sequence[Any] | None


def _instantiate(name: str, spec: Any) -> A.BasicTransform | A.BaseCompose:
    """Turn one entry of a pipeline spec into an albumentations transform."""
    if isinstance(spec, (A.BasicTransform, A.BaseCompose)):
        return spec
    if isinstance(spec, Mapping):
        if "_target_" not in spec:
            raise ValueError(
                f"Transform '{name}' has no _target_ (got keys {sorted(spec)}); give it e.g. "
                "`_target_: albumentations.HorizontalFlip`, or set it to null to disable it."
            )
        # hydra is imported lazily: the datamodules are usable without it for built transforms.
        from hydra.utils import instantiate

        built = instantiate(spec)
        if not isinstance(built, (A.BasicTransform, A.BaseCompose)):
            raise ValueError(
                f"Transform '{name}' (_target_={spec['_target_']}) built a {type(built).__name__}, "
                "not an albumentations transform."
            )
        return built
    raise ValueError(
        f"Transform '{name}' must be an albumentations transform, a config with _target_, or null; "
        f"got {type(spec).__name__}: {spec!r}"
    )


def build_transforms(spec: TransformSpec, seed: int | None = None) -> A.Compose:
    """Build ``A.Compose([... , ToTensorV2(transpose_mask=True)])`` from a pipeline spec.

    Args:
        spec: mapping ``name -> transform | config with _target_ | None`` (applied in order),
            a sequence of the same values, or ``None`` for no transforms at all (the result then
            only converts to tensors -- images stay uint8, so give at least a ``Normalize``).
        seed: seed of the Compose's own random generator (albumentations 2.0 ignores numpy's
            and Python's global seeds). ``None`` draws a fresh seed. DataLoader workers reseed
            it per worker, see :func:`init_worker`.

    Returns:
        The composed pipeline; call it as ``pipeline(image=..., mask=...)``.
    """
    if spec is None:
        items: list[tuple[str, Any]] = []
    elif isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    elif isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)):
        items = [(str(i), v) for i, v in enumerate(spec)]
    else:
        raise ValueError(
            f"Transforms must be a mapping name -> transform (or a list), got {type(spec).__name__}"
        )
    transforms = [_instantiate(name, value) for name, value in items if value is not None]
    # transpose_mask: a multilabel mask [H, W, C] becomes [C, H, W] like the image.
    transforms.append(ToTensorV2(transpose_mask=True))
    return A.Compose(transforms, seed=seed)


def default_transforms(image_size: int, train: bool) -> dict[str, A.BasicTransform]:
    """The pipeline used when a datamodule gets ``train_transforms=None`` / ``val_transforms=None``.

    Train: Resize to ``image_size`` x ``image_size``, HorizontalFlip(p=0.5), Normalize (ImageNet
    mean/std). Val: Resize, Normalize. The yaml configs spell out their own (richer) defaults.
    """
    pipeline: dict[str, A.BasicTransform] = {"resize": A.Resize(image_size, image_size)}
    if train:
        pipeline["hflip"] = A.HorizontalFlip(p=0.5)
    pipeline["normalize"] = A.Normalize()
    return pipeline


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: own random stream per worker, single-threaded OpenCV.

    albumentations 2.0 keeps its random state inside the Compose, so forked workers would all
    inherit the same state and draw identical augmentation sequences. Torch gives each worker a
    distinct seed (``base_seed + worker_id``, ``base_seed`` new every epoch unless workers are
    persistent and derived from torch's global seed), which we hand to the pipeline.
    OpenCV's own thread pool in every worker would oversubscribe the cores (torch already runs
    workers single-threaded), so it is switched off there.
    """
    import cv2
    import torch.utils.data

    cv2.setNumThreads(0)
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    transform = getattr(info.dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(info.seed % 2**32)


def _with_generators(pipeline: A.BaseCompose) -> Iterator[tuple[str, Any]]:
    """``(name, transform)`` for the pipeline and every transform nested in it, in a stable order.

    albumentations 2.0 gives each of them a numpy and a Python generator of its own
    (``random_generator``, ``py_random``). Names join position and class
    (``"1.ColorJitter"``), so a state saved for one pipeline never lands on another transform.
    """

    def walk(t: Any, name: str) -> Iterator[tuple[str, Any]]:
        yield name, t
        for i, child in enumerate(getattr(t, "transforms", None) or []):
            if isinstance(child, (A.BasicTransform, A.BaseCompose)):
                yield from walk(child, f"{name}.{i}.{type(child).__name__}".lstrip("."))

    yield from walk(pipeline, "")


def pipeline_random_state(pipeline: A.BaseCompose) -> dict[str, Any]:
    """The random state of every generator in ``pipeline`` (plain ints, strings and tuples).

    Returns:
        ``{name: {"numpy": bit-generator state, "python": random.Random state}}``; ``""`` names
        the pipeline itself.
    """
    return {
        name: {"numpy": t.random_generator.bit_generator.state, "python": t.py_random.getstate()}
        for name, t in _with_generators(pipeline)
    }


def set_pipeline_random_state(pipeline: A.BaseCompose, state: Mapping[str, Any]) -> list[str]:
    """Put back what :func:`pipeline_random_state` returned, transform by transform.

    Returns:
        The names in ``state`` that ``pipeline`` does not have (a transform added, removed or
        replaced since): those keep their seeded state.
    """
    left = dict(state)
    for name, t in _with_generators(pipeline):
        if name in left:
            saved = left.pop(name)
            t.random_generator.bit_generator.state = saved["numpy"]
            version, internal, gauss = saved["python"]
            t.py_random.setstate((version, tuple(internal), gauss))
    return sorted(left)
