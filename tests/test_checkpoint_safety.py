"""A checkpoint cannot run code: predict, export and resume refuse hostile files before acting on them.

Each hostile checkpoint is the tiny trained one with one harmless payload added that, if it ran,
would create a marker file: a pickled callable, or a ``_target_`` to a function that writes a
file or loads a pickle, hidden in the model config, a transform or the optimizer. The payloads
are first shown to work when loaded or built without the safeguards, so the refusals prove
something.
"""

from __future__ import annotations

import pathlib
import warnings
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from reliability_helpers import ROOT, compose_run, load_script, trained_checkpoint, write_images

from segtrain.inference import load_inference_model
from segtrain.trust import UntrustedCheckpointError, check_config_targets, safe_torch_load, target_problem


class TouchOnUnpickle:
    """Unpickling this calls ``Path(marker).touch()``: the shape of any pickle exploit, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _write_text_target(marker: Path) -> dict:
    # Path(marker).write_text("pwned"), spelled as Hydra configs: the kind of call Hydra's blocklist lets through.
    return {"_target_": "pathlib.Path.write_text", "_args_": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}, "pwned"]}


def _load_pickle_target(marker: Path, target: str) -> dict:
    evil = marker.parent / "payload.pkl"
    torch.save(TouchOnUnpickle(marker), evil)
    return {"_target_": target, "_args_": [str(evil)], "weights_only": False}


PAYLOADS = {
    "write_text": _write_text_target,
    "torch_load": lambda m: _load_pickle_target(m, "torch.load"),
    # torch.load under an allowed prefix: the name passes, the object (a function) does not.
    "reexported_torch_load": lambda m: _load_pickle_target(m, "segtrain.inference.torch.load"),
}


def _hide(config: dict, where: str, payload: dict) -> None:
    if where == "model":
        config["model"]["aux_params"] = payload  # a nested constructor argument of the network
    elif where == "transform":
        config["data"]["val_transforms"] = {"evil": payload, **config["data"]["val_transforms"]}
    else:
        config["optimizer"] = {**payload, "_partial_": False}


def _hostile_checkpoints(folder: Path) -> dict[str, tuple[Path, Path]]:
    """``case -> (checkpoint, marker)`` for every payload and hiding place, plus the pickled callable."""
    clean = safe_torch_load(trained_checkpoint("binary", 1))
    cases = {}
    for kind, make in PAYLOADS.items():
        for where in ("model", "transform", "optimizer"):
            name = f"{kind}-in-{where}"
            marker = folder / name / "marker"
            marker.parent.mkdir(parents=True)
            checkpoint = {**clean, "config": OmegaConf.to_container(OmegaConf.create(clean["config"]))}
            _hide(checkpoint["config"], where, make(marker))
            torch.save(checkpoint, folder / name / "hostile.ckpt")
            cases[name] = (folder / name / "hostile.ckpt", marker)
    marker = folder / "pickled" / "marker"
    marker.parent.mkdir()
    torch.save({**clean, "payload": TouchOnUnpickle(marker)}, folder / "pickled" / "hostile.ckpt")
    cases["pickled-callable"] = (folder / "pickled" / "hostile.ckpt", marker)
    return cases


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return _hostile_checkpoints(tmp_path_factory.mktemp("hostile"))


CASES = ["pickled-callable"] + [f"{k}-in-{w}" for k in PAYLOADS for w in ("model", "transform", "optimizer")]


def test_payloads_run_without_the_safeguards(tmp_path):
    """The payloads are real: unsafe loading or building them does create the marker."""
    for name, (ckpt, marker) in _hostile_checkpoints(tmp_path).items():
        checkpoint = torch.load(ckpt, weights_only=False)
        if name == "pickled-callable":
            assert marker.exists(), name
            continue
        config = checkpoint["config"]
        where = name.rsplit("-in-", 1)[1]
        node = {"model": lambda: config["model"]["aux_params"], "transform": lambda: config["data"]["val_transforms"]["evil"],
                "optimizer": lambda: config["optimizer"]}[where]()
        instantiate(node)
        assert marker.exists(), name


def _expect_refusal(err: pytest.ExceptionInfo, case: str, ckpt: Path) -> None:
    text = str(err.value)
    assert text.startswith(f"Refusing {ckpt}"), text
    if case == "pickled-callable":
        assert "pickled objects other than tensors" in text and "weights_only=False" in text
        return
    target = {"write_text": "pathlib.Path.write_text", "torch_load": "'torch.load'",
              "reexported_torch_load": "segtrain.inference.torch.load"}[case.split("-in-")[0]]
    key = {"model": "config.model.aux_params", "transform": "config.data.val_transforms.evil",
           "optimizer": "config.optimizer"}[case.rsplit("-in-", 1)[1]]
    assert target in text and key in text and "trust_checkpoint=true" in text, text


@pytest.mark.parametrize("case", CASES)
def test_predict_refuses(hostile, case, tmp_path):
    ckpt, marker = hostile[case]
    write_images(tmp_path / "in", [(32, 32)])
    predict = load_script("predict")
    args = predict.parse_overrides(predict.PredictArgs, [f"ckpt_path={ckpt}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}"])
    with pytest.raises(UntrustedCheckpointError) as err:
        predict.predict(args)
    _expect_refusal(err, case, ckpt)
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", CASES)
def test_export_refuses(hostile, case, tmp_path):
    ckpt, marker = hostile[case]
    export = load_script("export")
    with pytest.raises(UntrustedCheckpointError) as err:
        export.export(export.parse_overrides(export.ExportArgs, [f"ckpt_path={ckpt}", f"output={tmp_path / 'm.onnx'}"]))
    _expect_refusal(err, case, ckpt)
    assert not marker.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("case", CASES)
def test_resume_refuses(hostile, case, tmp_path):
    from segtrain.run import train

    ckpt, marker = hostile[case]
    with pytest.raises(UntrustedCheckpointError) as err:
        train(compose_run([f"ckpt_path={ckpt}"], tmp_path / "run"))
    _expect_refusal(err, case, ckpt)
    assert not marker.exists()


def test_trust_checkpoint_builds_a_target_off_the_list(tmp_path):
    """trust_checkpoint=true is the way forward the message names: a benign target off the list then builds."""
    checkpoint = safe_torch_load(trained_checkpoint("binary", 1))
    model = dict(checkpoint["config"]["model"])
    # smp's own factory: a function (refused), equivalent to the project's build_network.
    model.update(_target_="segmentation_models_pytorch.create_model", classes=1)
    del model["task"], model["num_classes"]
    checkpoint["config"] = {**checkpoint["config"], "model": model}
    torch.save(checkpoint, tmp_path / "foreign.ckpt")
    with pytest.raises(UntrustedCheckpointError, match="segmentation_models_pytorch.create_model.*is a function"):
        load_inference_model(tmp_path / "foreign.ckpt")
    trusted = load_inference_model(tmp_path / "foreign.ckpt", trust=True)
    reference = load_inference_model(trained_checkpoint("binary", 1))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(trusted.net(x), reference.net(x))


def test_checkpoints_are_plain_data_with_versions():
    """What train.py writes (last and best) loads with weights_only=True and records the library versions."""
    import lightning
    import segmentation_models_pytorch as smp

    last = trained_checkpoint("binary", 1)
    for path in [last, *last.parent.glob("best*.ckpt")]:
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["versions"]["torch"] == torch.__version__
        assert checkpoint["versions"]["lightning"] == lightning.__version__
        assert checkpoint["versions"]["segmentation_models_pytorch"] == smp.__version__
        assert checkpoint["versions"]["seglosses"] != ""
    assert len(list(last.parent.glob("best*.ckpt"))) == 1


def test_other_major_version_warns_with_both(tmp_path):
    checkpoint = safe_torch_load(trained_checkpoint("binary", 1))
    checkpoint["versions"] = {**checkpoint["versions"], "torch": "1.13.1", "segmentation_models_pytorch": "0.3.4"}
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with pytest.warns(UserWarning) as record:
        load_inference_model(tmp_path / "old.ckpt")
    texts = [str(w.message) for w in record]
    assert any("torch 1.13.1" in t and f"torch {torch.__version__}" in t for t in texts), texts
    assert any("segmentation_models_pytorch 0.3.4" in t for t in texts), texts  # 0.x: the minor is the major
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the unchanged checkpoint: no version warning
        load_inference_model(trained_checkpoint("binary", 1))


def test_every_shipped_config_target_is_allowed():
    """The allow-list admits everything conf/ can put into a checkpoint (else every real checkpoint is refused)."""
    targets = set()
    for path in (ROOT / "conf").rglob("*.yaml"):
        if path.relative_to(ROOT / "conf").parts[0] == "hydra":
            continue  # Hydra's own node (sweeper, sampler, launcher) is not part of the job config a checkpoint stores
        for line in path.read_text().splitlines():
            if line.strip().startswith("_target_:"):
                targets.add(line.split(":", 1)[1].split("#")[0].strip())
    assert len(targets) > 15
    assert {t: target_problem(t) for t in sorted(targets)} == {t: None for t in sorted(targets)}


@pytest.mark.parametrize(
    "target, why",
    [
        ("os.system", "outside the allow-list"),
        ("torch.hub.load", "outside the allow-list"),
        ("segtrain.inference.Path", "defined outside segtrain"),  # pathlib.Path re-exported
        ("segtrain.run.train", "not a class"),
        ("albumentations.Compose.from_pretrained", "not a class"),
        ("albumentations.Resize.__init__", "not a public dotted name"),
        ("segtrain.no_such_module.Thing", "cannot be resolved"),
    ],
)
def test_target_rules(target, why):
    assert why in target_problem(target)
    with pytest.raises(UntrustedCheckpointError, match="trust_checkpoint=true"):
        check_config_targets({"a": [{"b": {"_target_": target}}]}, "x.ckpt")


def test_unresolved_interpolation_is_refused():
    with pytest.raises(UntrustedCheckpointError, match=r"config.data.root = '\$\{oc.env:HOME\}'"):
        check_config_targets({"data": {"root": "${oc.env:HOME}"}}, "x.ckpt")


def test_resume_under_another_major_version_warns(compose, tmp_path):
    """SegmentationModule.on_load_checkpoint (called by Lightning on fit(ckpt_path=...)) warns with both versions."""
    from segtrain.run import build_module

    module = build_module(compose([], tmp_path))
    checkpoint = safe_torch_load(trained_checkpoint("binary", 1))
    with pytest.warns(UserWarning, match=r"lightning 1\.9\.5; this is lightning \d"):
        module.on_load_checkpoint({**checkpoint, "versions": {**checkpoint["versions"], "lightning": "1.9.5"}})
