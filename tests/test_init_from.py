"""``init_from``: a new run starts from an earlier model's network weights (segtrain/init_from.py).

The fine-tuning tests reuse the session's one-epoch binary run (reliability_helpers.trained_checkpoint)
and fine-tune it as a 3-class multiclass run: the head changes shape, everything else must arrive
unchanged. The network is captured right after ``apply_init`` (before any training step) by
wrapping ``segtrain.run.apply_init``. The bad-input tests stop at start-up: no training step runs.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

import segtrain.run as run_module
from segtrain.inference import load_checkpoint, network_state
from segtrain.init_from import apply_init, resolve_init_source
from segtrain.pretrained import save_pretrained
from segtrain.run import train
from segtrain.trust import UntrustedCheckpointError
from segtrain.utils import build
from tests.reliability_helpers import compose_run, trained_checkpoint

MULTICLASS = ("task=multiclass", "num_classes=3", "loss=ce_dice")
HEAD = "segmentation_head.0.weight"


class Stop(Exception):
    """Raised by the capture to end a run right after the weights were applied (no data, no step)."""


def _capture(monkeypatch, stop: bool = False) -> dict:
    """Wrap run.apply_init: record the network's tensors before and after it (and optionally stop there)."""
    seen: dict = {}
    real = run_module.apply_init

    def wrapped(net, state, exclude=None, source=""):
        seen["before"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        seen["report"] = real(net, state, exclude, source=source)
        seen["after"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        seen["source"] = source
        if stop:
            raise Stop
        return seen["report"]

    monkeypatch.setattr(run_module, "apply_init", wrapped)
    return seen


def _source_run() -> tuple[Path, dict[str, torch.Tensor]]:
    """The earlier binary run's folder and the network tensors of the checkpoint init_from picks in it."""
    run_dir = trained_checkpoint("binary", 1).parent.parent
    picked = resolve_init_source(str(run_dir))
    return run_dir, network_state(load_checkpoint(picked)["state_dict"])


def _check_fine_tuned(seen: dict, source: dict[str, torch.Tensor]) -> None:
    after = seen["after"]
    assert after[HEAD].shape != source[HEAD].shape  # binary (1 channel) -> 3 classes: a new head
    kept = [k for k in source if not k.startswith("segmentation_head")]
    assert any(k.startswith("encoder.") for k in kept) and any(k.startswith("decoder.") for k in kept)
    for name in kept:
        assert torch.equal(after[name], source[name]), name
    assert torch.equal(after[HEAD], seen["before"][HEAD])  # the head is as freshly built
    report = seen["report"]
    assert sorted(n for n, _, _ in report.reinitialised) == ["segmentation_head.0.bias", HEAD]
    assert len(report.loaded) == len(kept)


def _epochs(run_dir: Path) -> set[int]:
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    return {int(r["epoch"]) for r in rows if r.get("epoch")}


@pytest.mark.slow
def test_fine_tune_from_a_run_folder(tmp_path, monkeypatch, caplog):
    """init_from=<run folder> task=multiclass: encoder + decoder kept, head new, a new run from epoch 0."""
    src_dir, source = _source_run()
    seen = _capture(monkeypatch)
    new_dir = tmp_path / "fine_tuned"
    with caplog.at_level(logging.INFO, logger="segtrain.init_from"):
        train(compose_run([*MULTICLASS, f"init_from={src_dir}"], new_dir))
    _check_fine_tuned(seen, source)
    assert str(src_dir) in seen["source"]
    assert "tensors loaded" in caplog.text and HEAD in caplog.text and str(src_dir) in caplog.text
    # A new run: its own folder and checkpoints, a fresh optimizer and epoch counter.
    new_last = new_dir / "checkpoints" / "last.ckpt"
    assert new_last.is_file()
    assert _epochs(new_dir) == {0}
    new_ckpt, src_ckpt = load_checkpoint(new_last), load_checkpoint(src_dir / "checkpoints" / "last.ckpt")
    assert new_ckpt["epoch"] == 0 and new_ckpt["global_step"] == src_ckpt["global_step"]
    assert new_ckpt["config"]["init_from"] == str(src_dir)  # recorded in the run's config


@pytest.mark.slow
def test_fine_tune_from_an_exported_folder(tmp_path, monkeypatch):
    """The same from a model-weights folder written as scripts/export.py does."""
    src_dir, source = _source_run()
    checkpoint = load_checkpoint(resolve_init_source(str(src_dir)))
    config = dict(checkpoint["config"])
    net = build({**config["model"], "encoder_weights": None})
    net.load_state_dict(network_state(checkpoint["state_dict"]))
    exported = save_pretrained(net, config, tmp_path / "exported", checkpoint.get("preprocessing"))
    seen = _capture(monkeypatch)
    new_dir = tmp_path / "from_exported"
    train(compose_run([*MULTICLASS, f"init_from={exported}", "evaluation.enabled=false"], new_dir))
    _check_fine_tuned(seen, source)
    assert (new_dir / "checkpoints" / "last.ckpt").is_file() and _epochs(new_dir) == {0}


@pytest.mark.slow
def test_exclude_leaves_the_encoder_fresh(tmp_path, monkeypatch):
    """init_from_exclude='^encoder': the encoder stays as built, the decoder comes from the source."""
    src_dir, source = _source_run()
    seen = _capture(monkeypatch, stop=True)
    with pytest.raises(Stop):
        train(compose_run([*MULTICLASS, f"init_from={src_dir}", "init_from_exclude='^encoder'"], tmp_path / "run"))
    before, after = seen["before"], seen["after"]
    encoder = [k for k in after if k.startswith("encoder.")]
    assert encoder and all(torch.equal(after[k], before[k]) for k in encoder)
    assert any(not torch.equal(after[k], source[k]) for k in encoder if after[k].is_floating_point())
    decoder = [k for k in source if k.startswith("decoder.")]
    assert decoder and all(torch.equal(after[k], source[k]) for k in decoder)
    assert sorted(seen["report"].excluded) == sorted(k for k in source if k.startswith("encoder."))


def test_other_in_channels_reinitialises_the_first_conv():
    """A 1-channel network from a 3-channel one: the input convolution is new (and reported), the rest loaded."""
    cfg = compose_run([])
    source = build({**cfg.model, "in_channels": 3}).state_dict()
    net = build({**cfg.model, "in_channels": 1})
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    report = apply_init(net, source)
    assert report.first_conv is not None and report.first_conv in [n for n, _, _ in report.reinitialised]
    assert torch.equal(net.state_dict()[report.first_conv], fresh[report.first_conv])
    assert len(report.loaded) == len(source) - 1
    assert any("first convolution" in line for line in report.lines())


# --------------------------------------------------------------------------------------------
# bad input: each refused at start-up, before any training step
# --------------------------------------------------------------------------------------------


def _refused(tmp_path, overrides, error, match):
    run_dir = tmp_path / "run"
    with pytest.raises(error, match=match):
        train(compose_run(overrides, run_dir))
    assert not (run_dir / "checkpoints").exists()


def test_missing_path(tmp_path):
    _refused(tmp_path, [f"init_from={tmp_path / 'nope.ckpt'}"], FileNotFoundError, r"init_from=.*nope\.ckpt does not exist")


def test_folder_without_a_checkpoint(tmp_path):
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    _refused(tmp_path, [f"init_from={tmp_path / 'empty_run'}"], FileNotFoundError, "folder without a model")


def test_another_architecture(tmp_path):
    """A state dict of an unrelated module: nothing matches, and the message names keys of both sides."""
    torch.save(nn.Sequential(nn.Linear(3, 4)).state_dict(), tmp_path / "other.pt")
    _refused(tmp_path, [f"init_from={tmp_path / 'other.pt'}"], ValueError, r"no tensor matches.*0\.weight.*encoder\.")


def test_exclude_needs_init_from_and_a_regex(tmp_path):
    _refused(tmp_path, ["init_from_exclude='^encoder'"], ValueError, "without init_from")
    torch.save({"state_dict": {}}, tmp_path / "init.ckpt")
    _refused(tmp_path, [f"init_from={tmp_path / 'init.ckpt'}", "init_from_exclude='(encoder'"], ValueError,
             "not a regular expression")


def test_init_from_with_ckpt_path(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "resume.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "init.ckpt")
    overrides = [f"init_from={tmp_path / 'init.ckpt'}", f"ckpt_path={tmp_path / 'resume.ckpt'}"]
    _refused(tmp_path, overrides, ValueError, "init_from=.*ckpt_path=.*both given")


def test_target_off_the_allow_list_needs_trust(tmp_path, monkeypatch):
    """A checkpoint whose config names a function off the allow-list: refused, unless trust_checkpoint=true."""
    net = build({**compose_run([]).model, "in_channels": 3})
    config = {"model": {"_target_": "segmentation_models_pytorch.create_model", "arch": "unet"}}
    state = {f"net.{k}": v for k, v in net.state_dict().items()}  # as the LightningModule stores it
    torch.save({"state_dict": state, "config": config}, tmp_path / "foreign.ckpt")
    source = f"init_from={tmp_path / 'foreign.ckpt'}"
    _refused(tmp_path, [source], UntrustedCheckpointError, "create_model.*trust_checkpoint=true")
    seen = _capture(monkeypatch, stop=True)
    with pytest.raises(Stop):
        train(compose_run([source, "trust_checkpoint=true"], tmp_path / "trusted"))
    assert len(seen["report"].loaded) == len(net.state_dict())
