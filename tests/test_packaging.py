"""The wheel is the loss package alone, and it works in an environment that holds torch alone.

The test builds the wheel from a copy of this checkout (offline: the venv's own setuptools, no
build isolation), reads its metadata and file list, then installs it into a fresh virtual
environment whose only other distributions are torch and torch's own runtime dependencies
(linked from this venv), and there runs every public loss forward and backward while checking
that none of the harness's packages can be imported.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Hard dependencies the wheel may declare: torch, and numpy at most.
ALLOWED_REQUIREMENTS = {"torch", "numpy"}
# The harness's dependencies: none may be importable next to the installed wheel.
HARNESS_MODULES = (
    "lightning", "pytorch_lightning", "hydra", "omegaconf", "optuna", "submitit",
    "segmentation_models_pytorch", "albumentations", "torchmetrics", "tensorboard", "matplotlib",
    "torchvision", "monai", "onnx", "onnxruntime", "PIL", "rich",
    # the harness itself must not travel in the wheel either
    "segtrain", "datamodules", "fingerprint", "tifffile",
    # the extras distance / skeleton: a loss needing them says so (seglosses/derived.py)
    "scipy", "skimage",
)
# Build outputs and local state that a copy of the checkout leaves out.
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "logs", "outputs", "multirun", "data", "build", "dist", "*.egg-info",
    "__pycache__", ".pytest_cache", ".hypothesis",
)


def _requirement_name(req: str) -> str:
    """'torch>=2.3; extra == "x"' -> 'torch' (normalised as pip does)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_extra(req: str) -> bool:
    return "extra ==" in req.replace("extra==", "extra ==")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (the checkout itself stays clean of build/)."""
    src = tmp_path_factory.mktemp("src") / "seglosses"
    shutil.copytree(ROOT, src, ignore=COPY_IGNORE)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(src),
         "-w", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, (
        f"building the wheel failed (needs setuptools>=77 in this venv: `make install`):\n{proc.stderr[-3000:]}"
    )
    (whl,) = out.glob("seglosses-*.whl")
    return whl


def _metadata(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return zf.read(name).decode().splitlines()


def test_wheel_requires_torch_alone(wheel):
    requires = [line.split(":", 1)[1].strip() for line in _metadata(wheel) if line.startswith("Requires-Dist:")]
    hard = {_requirement_name(r) for r in requires if not _is_extra(r)}
    assert "torch" in hard, f"the wheel must require torch; its Requires-Dist: {requires}"
    assert hard <= ALLOWED_REQUIREMENTS, f"hard dependencies beyond torch (and numpy): {sorted(hard - ALLOWED_REQUIREMENTS)}"
    # The harness's dependencies are still declared, behind extras.
    extras = {_requirement_name(r) for r in requires if _is_extra(r)}
    assert {"lightning", "hydra-core", "segmentation-models-pytorch"} <= extras, sorted(extras)


def test_wheel_holds_the_loss_package_alone(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    top = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1, top
    assert top - dist_info == {"seglosses"}, f"the wheel ships more than seglosses/: {sorted(top - dist_info)}"
    sources = {Path(p).relative_to(ROOT).as_posix() for p in (ROOT / "seglosses").rglob("*.py")}
    assert sources <= set(names), f"seglosses modules missing from the wheel: {sorted(sources - set(names))}"


def _torch_closure() -> list[md.Distribution]:
    """torch and every distribution its unconditional requirements pull in, from this venv."""
    seen: dict[str, md.Distribution] = {}
    todo = ["torch"]
    while todo:
        name = _requirement_name(todo.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # a platform-conditional requirement that does not apply here
        seen[name] = dist
        for req in dist.requires or ():
            marker = req.split(";", 1)[1] if ";" in req else ""
            if _is_extra(marker) or (marker and not _marker_applies(marker)):
                continue
            todo.append(req)
    return list(seen.values())


def _marker_applies(marker: str) -> bool:
    try:
        from packaging.markers import Marker
    except ImportError:  # not a dependency of ours; pip always vendors it
        from pip._vendor.packaging.markers import Marker

    return Marker(marker.strip()).evaluate()


def _top_level_entries(dist: md.Distribution) -> set[str]:
    """The names a distribution puts directly into site-packages (packages, modules, dist-info, .libs)."""
    entries = set()
    for f in dist.files or ():
        part = f.parts[0]
        if part not in ("..", "__pycache__") and not part.endswith(".pth"):
            entries.add(part)
    return entries


@pytest.fixture(scope="module")
def torch_only_venv(tmp_path_factory) -> Path:
    """A fresh venv whose site-packages links torch and its runtime dependencies, nothing else."""
    env_dir = tmp_path_factory.mktemp("venv") / "torch-only"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output(
        [python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    for dist in _torch_closure():
        base = Path(dist.locate_file(""))
        for entry in _top_level_entries(dist):
            target = site / entry
            if (base / entry).exists() and not target.exists():
                target.symlink_to(base / entry)
    return python


LOSS_SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys
    import torch
    import seglosses
    from seglosses import (BCELoss, CombinedLoss, CrossEntropyLoss, DiceLoss, FocalLoss, JaccardLoss,
                           TverskyLoss, functional as F)

    assert seglosses.__file__.startswith(sys.prefix), seglosses.__file__  # the installed copy
    present = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None]
    assert not present, f"importable next to the wheel: {present}"

    torch.manual_seed(0)
    B, C, H, W = 2, 3, 16, 16
    targets = {
        "binary": (torch.rand(B, 1, H, W) > 0.5).float(),
        "multiclass": torch.randint(0, C, (B, H, W)),
        "multilabel": (torch.rand(B, C, H, W) > 0.5).float(),
    }
    region = [DiceLoss, JaccardLoss, TverskyLoss, FocalLoss]
    losses = {
        "binary": [BCELoss()] + [cls("binary") for cls in region],
        "multiclass": [CrossEntropyLoss()] + [cls("multiclass") for cls in region],
        "multilabel": [BCELoss()] + [cls("multilabel") for cls in region],
    }
    pairs = {"binary": ("bce", BCELoss), "multiclass": ("ce", CrossEntropyLoss), "multilabel": ("bce", BCELoss)}
    ran = []
    for mode, target in targets.items():
        channels = 1 if mode == "binary" else C
        name, pixel_loss = pairs[mode]
        combos = [
            CombinedLoss({name: pixel_loss(), "dice": DiceLoss(mode)}, {name: 0.5, "dice": 0.5}),
            CombinedLoss({"dice": DiceLoss(mode), "focal": FocalLoss(mode)}),
        ]
        for loss_fn in losses[mode] + combos:
            logits = torch.randn(B, channels, H, W, requires_grad=True)
            value = loss_fn(logits, target)
            value.backward()
            assert value.dim() == 0 and torch.isfinite(value), (mode, loss_fn, value)
            assert logits.grad is not None and torch.isfinite(logits.grad).all(), (mode, loss_fn)
            ran.append(f"{mode}:{type(loss_fn).__name__}")
        assert torch.isfinite(F.dice_loss(torch.randn(B, channels, H, W), target, mode))

    # Every other exported loss, in each mode it accepts (a mode it refuses is a clear ValueError).
    # A loss that needs a derived target gets one (a distance map, a skeleton) as the harness hands
    # it in; called without it, it needs scipy / scikit-image, which the wheel does not pull: a clear
    # ImportError naming the extra. HausdorffDTLoss always needs scipy (the prediction's field).
    import inspect
    from torch import nn
    from seglosses import DeepSupervisionLoss
    derived = {mode: {"distance": torch.randn(B, 1 if mode == "binary" else C, H, W), "skeleton": target}
               for mode, target in targets.items()}
    without_extras = set()
    done = {name.split(":")[1] for name in ran} | {"CombinedLoss"}
    for cls_name in seglosses.__all__:
        cls = getattr(seglosses, cls_name)
        if not (inspect.isclass(cls) and issubclass(cls, nn.Module)) or cls_name in done:
            continue
        for mode, target in targets.items():
            channels = 1 if mode == "binary" else C
            takes_mode = "mode" in inspect.signature(cls).parameters
            try:
                if cls is DeepSupervisionLoss:
                    loss_fn, logits = cls(DiceLoss(mode)), [torch.randn(B, channels, H, W, requires_grad=True),
                                                            torch.randn(B, channels, H // 2, W // 2, requires_grad=True)]
                else:
                    loss_fn, logits = (cls(mode) if takes_mode else cls()), torch.randn(B, channels, H, W, requires_grad=True)
                needs = getattr(cls, "derived_targets", ())
                if needs:
                    try:
                        loss_fn(logits, target)
                        raise AssertionError(f"{cls_name} computed its derived targets without scipy/scikit-image")
                    except ImportError as err:
                        assert "pip install 'seglosses[" in str(err), err
                value = loss_fn(logits, target, **{k: derived[mode][k] for k in needs})
            except ValueError:
                continue
            except ImportError as err:
                assert "pip install 'seglosses[distance]'" in str(err), err
                without_extras.add(cls_name)
                continue
            value.backward()
            grads = [x.grad for x in (logits if isinstance(logits, list) else [logits])]
            assert value.dim() == 0 and torch.isfinite(value), (mode, cls_name, value)
            assert all(g is not None and torch.isfinite(g).all() for g in grads), (mode, cls_name)
            ran.append(f"{mode}:{cls_name}")
            done.add(cls_name)
    assert without_extras == {"HausdorffDTLoss"}, without_extras
    missing = [n for n in seglosses.__all__ if inspect.isclass(getattr(seglosses, n))
               and issubclass(getattr(seglosses, n), nn.Module) and n not in done | without_extras]
    assert not missing, f"exported losses that ran in no mode: {missing}"
    print(len(ran), "losses ran:", " ".join(ran))
    """
)


@pytest.mark.slow  # two fresh interpreters that each import torch
def test_every_loss_runs_from_the_wheel_with_torch_alone(wheel, torch_only_venv, tmp_path):
    python = torch_only_venv
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    script = tmp_path / "run_losses.py"
    script.write_text(LOSS_SCRIPT)
    # -I: neither PYTHONPATH nor the user's site-packages nor the current folder reach the venv.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([python, "-I", str(script), *HARNESS_MODULES], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # 3 modes x (5 single losses + 2 combinations), then the catalogue: 36 runs in the modes each accepts
    # (LogCoshDiceLoss, SkeletonRecall, Boundary, HausdorffER, unified focal in all three; GWDL multiclass;
    # HausdorffDT none: it needs scipy)
    assert proc.stdout.startswith("57 losses ran:"), proc.stdout

    # The front page's example, as a user of the wheel would paste it.
    readme = (ROOT / "README.md").read_text().split("## Use the losses in your own code", 1)[1]
    example = tmp_path / "readme_example.py"
    example.write_text(re.search(r"```python\n(.*?)```", readme, flags=re.S).group(1))
    proc = subprocess.run([python, "-I", str(example)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
