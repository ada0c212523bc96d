"""Each loss term config's defaults are its constructor's defaults, unless listed here with a reason.

``conf/loss/terms/<name>.yaml`` is where a user reads a term's options (docs/losses.md says so),
so a default that drifts from ``seglosses`` would silently train another loss than the one the
Python API documents. Every difference must be a deliberate entry of :data:`DELIBERATE`.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
TERMS_DIR = ROOT / "conf" / "loss" / "terms"
TRAIN_YAML = ROOT / "conf" / "train.yaml"

# (term, option): (config value, why it differs from the constructor's default)
DELIBERATE = {
    ("tversky", "alpha"): (0.3, "alpha < beta weighs false negatives more: Tversky's recall-oriented "
                                "setting (Salehi et al. 2017); alpha = beta = 0.5 would be plain Dice"),
    ("tversky", "beta"): (0.7, "see alpha"),
}
# Options a config takes from a top-level key of conf/train.yaml instead of a constant: the raw
# yaml value must interpolate it (the task sets the mode; ignore_index is set once for losses and
# metrics), and the key's default must be the constructor's default.
FROM_TOP_LEVEL = {"mode": "task", "ignore_index": "ignore_index"}
# Constructor options the term configs leave out on purpose, with the reason.
NOT_EXPOSED = {
    "reduction": "the harness trains on, logs and combines scalar losses: always the mean",
    "from_logits": "every segmentation-models-pytorch network outputs logits",
}
# Config keys that reach the constructor under another name (segtrain/losses.py renames them,
# because a term's own `weight` is its weight in the combined loss).
RENAMED = {(target, "class_weights"): "weight" for target in (
    "seglosses.CrossEntropyLoss", "seglosses.FocalLoss", "seglosses.TopKCrossEntropyLoss",
    "seglosses.OhemCrossEntropyLoss")}
NOT_OPTIONS = {"_target_", "weight"}  # the class, and the term's weight in the sum


def _term(path: Path) -> tuple[str, dict]:
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # keep ${...} as written
    assert list(raw) == [path.stem], f"{path.name} must hold one term named {path.stem!r}, got {list(raw)}"
    return path.stem, raw[path.stem]


TERM_FILES = sorted(TERMS_DIR.glob("*.yaml"))


def test_there_are_term_configs():
    assert {p.stem for p in TERM_FILES} >= {"bce", "ce", "dice", "focal", "jaccard", "tversky"}


@pytest.mark.parametrize("path", TERM_FILES, ids=lambda p: p.stem)
def test_term_defaults_equal_the_constructor_defaults(path):
    name, term = _term(path)
    target = term["_target_"]
    params = {k: p for k, p in inspect.signature(get_class(target)).parameters.items()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    top_level = OmegaConf.load(TRAIN_YAML)
    mismatches, covered = [], set()
    for key, value in term.items():
        if key in NOT_OPTIONS:
            continue
        param = RENAMED.get((target, key), key)
        assert param in params, f"{path.name}: option {key!r} is not an argument of {target} ({sorted(params)})"
        covered.add(param)
        if key in FROM_TOP_LEVEL:
            wanted = "${" + FROM_TOP_LEVEL[key] + "}"
            assert value == wanted, f"{path.name}: {key} must be {wanted!r}, got {value!r}"
            value = top_level[FROM_TOP_LEVEL[key]]  # the value a default run passes
            if params[param].default is inspect.Parameter.empty:
                continue  # a required argument (mode): the task always gives it
        expected = params[param].default
        if (name, key) in DELIBERATE:
            deliberate_value, _reason = DELIBERATE[(name, key)]
            assert value == deliberate_value, f"{path.name}: {key}={value!r}, DELIBERATE says {deliberate_value!r}"
            assert value != expected, f"{path.name}: {key} now equals the constructor default: drop it from DELIBERATE"
        elif value != expected:
            mismatches.append(f"{key}: config {value!r} != {target}'s default {expected!r}")
    assert not mismatches, f"{path.name}: " + "; ".join(mismatches) + " (fix one side, or add it to DELIBERATE with a reason)"
    missing = sorted(set(params) - covered - set(NOT_EXPOSED))
    assert not missing, f"{path.name} does not list {target}'s option(s) {missing} (add them with their defaults)"


def test_deliberate_entries_name_real_options():
    for (name, key), (_value, reason) in DELIBERATE.items():
        _, term = _term(TERMS_DIR / f"{name}.yaml")
        assert key in term and reason, (name, key)
