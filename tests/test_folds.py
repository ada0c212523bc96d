"""Cross-validation folds (datamodules/folds.py): one partition of the data, the same for every fold and run.

The folds are disjoint and cover every labelled image, a group (patient) never straddles a fold,
``test/`` is in none of them, the same keys and seed give the same ``splits.json`` (the cache is
read back, and a cache that disagrees is refused rather than silently replaced), a split file is
used as given and a bad one is refused, and every wrong setting is a start-up error naming the
fix. One tiny multirun (slow) trains two folds through train.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from reliability_helpers import ROOT, TINY_TRAINER, compose_run

from datamodules.folds import FoldOptions, check_fold_options, group_keys, make_folds, resolve_folds, splits_cache_path
from datamodules.layout import discover_splits
from datamodules.sensor import write_sensor_dataset

GROUPS = r"^(patient\d+)_"


def _write(root: Path, n: int, val_every: int = 0, patients: int = 5) -> Path:
    """``n`` 32x32 8-bit images named ``patient<i % patients>_s<i>`` (``val_every``: train/ + val/ folders)."""
    write_sensor_dataset(root, [(32, 32)] * n, dtype="uint8", image_format="png", val_every=val_every)
    for path in sorted(root.rglob("s*.png")):
        i = int(path.stem[1:])
        path.rename(path.with_name(f"patient{i % patients:02d}_{path.name}"))
    return root


def _keys(pairs) -> list[str]:
    return sorted(p[0].stem for p in pairs)


def _splits(root, **options):
    return discover_splits(root, task="binary", num_classes=1, **options)


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    """17 images in images/ + masks/, 5 patients of 3 or 4 images."""
    return _write(tmp_path_factory.mktemp("flat") / "d", 17)


@pytest.fixture(scope="module")
def with_test(tmp_path_factory) -> Path:
    """train/ + val/ (12 + 4 images) and a test/ split of 3."""
    root = _write(tmp_path_factory.mktemp("split") / "d", 16, val_every=4)
    write_sensor_dataset(root / "test", [(32, 32)] * 3, dtype="uint8", image_format="png", val_every=0, seed=1)
    for path in (root / "test").rglob("s*.png"):
        path.rename(path.with_name(f"testonly_{path.name}"))
    return root


# --- the partition -------------------------------------------------------------------------------------


def test_folds_are_disjoint_balanced_and_cover_every_labelled_image(flat):
    every = _keys(_splits(flat)["train"] + _splits(flat)["val"])
    vals = []
    for fold in range(5):
        s = _splits(flat, folds=5, fold=fold)
        train, val = _keys(s["train"]), _keys(s["val"])
        assert not set(train) & set(val) and sorted(train + val) == every
        assert s.folds.fold == fold and len(s.folds.folds) == 5 and s.folds.folds[fold]["val"] == val
        vals.append(val)
    assert sorted(k for v in vals for k in v) == every  # each image validated exactly once
    assert {len(v) for v in vals} <= {3, 4}  # 17 images in 5 folds: as equal as they go


def test_train_and_val_folders_are_pooled_and_test_stays_out(with_test):
    plain = _splits(with_test)
    labelled = _keys(plain["train"] + plain["val"])
    for fold in range(4):
        s = _splits(with_test, folds=4, fold=fold)
        assert sorted(_keys(s["train"]) + _keys(s["val"])) == labelled
        assert _keys(s["test"]) == _keys(plain["test"]) and len(s["test"]) == 3
        assert not any(k.startswith("testonly") for f in s.folds.folds for side in f.values() for k in side)


def test_split_folders_of_images_dir_layouts_are_pooled(tmp_path, flat):
    """data.images_dir / data.masks_dir (Cityscapes): keys keep the city folder; a pattern can group by it."""
    for split, city, names in (("train", "aachen", ["patient00_s000", "patient01_s001", "patient02_s002"]),
                               ("train", "bonn", ["patient03_s003", "patient04_s004"]),
                               ("val", "koeln", ["patient00_s005", "patient01_s006"])):
        for kind, top in (("images", "img"), ("masks", "gt")):
            (tmp_path / top / split / city).mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copy(flat / kind / f"{name}.png", tmp_path / top / split / city / f"{name}.png")
    s = _splits(tmp_path, images_dir="img", masks_dir="gt", folds=3, fold=0, group_pattern=r"^([^/]+)/")
    cities = [{k.split("/")[0] for k in f["val"]} for f in s.folds.folds]
    assert sorted(c for group in cities for c in group) == ["aachen", "bonn", "koeln"]
    assert all(len(group) == 1 for group in cities)


def test_groups_never_straddle_a_fold(flat):
    groups = group_keys(_keys(_splits(flat)["train"] + _splits(flat)["val"]), GROUPS)
    assert sorted(groups) == [f"patient{i:02d}" for i in range(5)]
    for folds in (2, 3, 5):
        partition = make_folds([k for ks in groups.values() for k in ks], folds, seed=3, group_pattern=GROUPS)
        for fold in partition:
            val_groups = {k.split("_")[0] for k in fold["val"]}
            assert not val_groups & {k.split("_")[0] for k in fold["train"]}
            assert all(set(groups[g]) <= set(fold["val"]) for g in val_groups)
    # Largest group first, each to the fold with the fewest images: 4, 4, 3, 3, 3 images in 3 folds -> 7 / 6 / 4.
    keys = [k for ks in groups.values() for k in ks]
    assert sorted(len(f["val"]) for f in make_folds(keys, 3, 0, GROUPS)) == [4, 6, 7]


def test_the_partition_is_a_pure_function_of_keys_folds_seed_and_pattern(flat):
    keys = _keys(_splits(flat)["train"] + _splits(flat)["val"])
    first = make_folds(keys, 4, seed=7)
    assert make_folds(list(reversed(keys)), 4, seed=7) == first  # the listing order does not matter
    assert make_folds(keys, 4, seed=8) != first  # another seed, another shuffle
    # The datamodule alone (no cache) computes the folds the harness stores.
    from datamodules import FolderDataModule

    dm = FolderDataModule(flat, folds=4, fold=2, seed=7, crop_size=32, num_workers=0)
    assert _keys(dm.splits()["val"]) == first[2]["val"] and dm.splits().folds.path is None


def test_folds_are_stored_once_and_read_back(flat, tmp_path):
    cache = tmp_path / "cache"
    a = _splits(flat, folds=3, fold=0, seed=1, cache_dir=cache)
    path = a.folds.path
    assert path.parent == cache.resolve() / "splits" and path.name.startswith("splits-")
    assert json.loads(path.read_text()) == a.folds.folds
    stamp = path.stat().st_mtime_ns
    b = _splits(flat, folds=3, fold=2, seed=1, cache_dir=cache)  # another fold: the same file, not rewritten
    assert b.folds.path == path and b.folds.folds == a.folds.folds and path.stat().st_mtime_ns == stamp
    assert _splits(flat, folds=3, fold=0, seed=2, cache_dir=cache).folds.path != path  # the seed names the file
    assert _splits(flat, folds=3, fold=0, seed=1, group_pattern=GROUPS, cache_dir=cache).folds.path != path
    # A stored file the current computation disagrees with is read, and refused, never replaced.
    swapped = [a.folds.folds[1], a.folds.folds[0], a.folds.folds[2]]
    path.write_text(json.dumps(swapped))
    with pytest.raises(ValueError, match=r"differ from the folds computed now.*data\.split_file="):
        _splits(flat, folds=3, fold=0, seed=1, cache_dir=cache)
    path.write_text("{half a fi")  # an unreadable one is rewritten
    assert _splits(flat, folds=3, fold=0, seed=1, cache_dir=cache).folds.folds == a.folds.folds
    assert json.loads(path.read_text()) == a.folds.folds


def test_cache_inside_the_data_folder_is_refused(flat):
    with pytest.raises(ValueError, match="inside data.root"):
        resolve_folds(["a", "b"], FoldOptions(2, 0, None, None), cache_dir=flat / "cache", data_root=flat)
    assert not (flat / "cache").exists()


# --- a split file of your own --------------------------------------------------------------------------


def test_split_file_is_used_as_given(flat, tmp_path):
    keys = _keys(_splits(flat)["train"] + _splits(flat)["val"])
    given = [{"train": keys[5:], "val": keys[:5]}, {"train": keys[:5] + keys[10:], "val": keys[5:10]}]
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(given))
    s = _splits(flat, split_file=str(path), fold=1)  # data.folds: the file's length
    assert _keys(s["val"]) == keys[5:10] and _keys(s["train"]) == sorted(keys[:5] + keys[10:])
    assert s.folds.path == path and len(s.folds.folds) == 2
    assert _keys(_splits(flat, split_file=path, folds=2, fold=0)["val"]) == keys[:5]
    path.write_text(json.dumps(given[:1]))  # one fold: a fixed train/val split, data.fold may be left out
    assert _keys(_splits(flat, split_file=path)["val"]) == keys[:5]


@pytest.mark.parametrize("edit, message", [
    (lambda g, k: {"train": k}, r"must hold a list of folds"),
    (lambda g, k: [{**g[0], "val": [*g[0]["val"], "nobody"]}], r"1 key\(s\) that no labelled image has: nobody"),
    (lambda g, k: [{**g[0], "val": [*g[0]["val"], "testonly_s000"]}], r"no labelled image has: testonly_s000"),
    (lambda g, k: [{"train": k[3:], "val": k[:4]}], r"fold 0 trains and validates on the same image\(s\)"),
    (lambda g, k: [g[0], {"train": k[6:], "val": k[2:6]}], r"validated in fold 0 and fold 1.*disjoint"),
])
def test_a_bad_split_file_is_refused(with_test, tmp_path, edit, message):
    plain = _splits(with_test)
    keys = _keys(plain["train"] + plain["val"])
    good = [{"train": keys[4:], "val": keys[:4]}]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(edit(good, keys)))
    with pytest.raises(ValueError, match=message):
        _splits(with_test, split_file=path, fold=0)


def test_split_file_mismatches_are_refused(flat, tmp_path):
    keys = _keys(_splits(flat)["train"] + _splits(flat)["val"])
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"train": keys[i + 1:] + keys[:i], "val": [keys[i]]} for i in range(3)]))
    with pytest.raises(ValueError, match=r"data.folds=5 but data.split_file=.* holds 3 folds"):
        _splits(flat, split_file=path, folds=5, fold=0)
    with pytest.raises(ValueError, match=r"data.fold=3 is out of range: .* holds 3 folds, use data.fold=0..2"):
        _splits(flat, split_file=path, fold=3)
    with pytest.raises(ValueError, match=r"holds 3 folds: choose one with data.fold \(0..2\)"):
        _splits(flat, split_file=path)
    patient0 = [k for k in keys if k.startswith("patient00")]
    path.write_text(json.dumps([{"train": [k for k in keys if k != patient0[0]], "val": [patient0[0]]}]))
    with pytest.raises(ValueError, match=r"fold 0 has group\(s\) patient00 .* in both train and val"):
        _splits(flat, split_file=path, group_pattern=GROUPS)
    with pytest.raises(FileNotFoundError, match="data.split_file=.*missing.json does not exist"):
        _splits(flat, split_file=tmp_path / "missing.json", fold=0)
    path.write_text("[{")
    with pytest.raises(ValueError, match="is not readable JSON"):
        _splits(flat, split_file=path, fold=0)


# --- every wrong setting, before anything trains ------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    ({"folds": 5, "fold": 5}, r"data.fold=5 is out of range for data.folds=5: use data.fold=0..4"),
    ({"folds": 5, "fold": -1}, r"data.fold=-1 is out of range"),
    ({"fold": 2}, r"data.fold=2 without data.folds: .*data.folds=5 data.fold=2"),
    ({"folds": 1, "fold": 0}, r"data.folds=1: cross-validation needs at least 2 folds"),
    ({"folds": 5}, r"data.folds=5 needs data.fold, .*-m data.folds=5 data.fold=0,1,2,3,4"),
    ({"group_pattern": GROUPS}, r"data.group_pattern=.* data.folds is not set"),
    ({"folds": 2, "fold": 0, "group_pattern": "(unclosed"}, r"is not a regular expression"),
    ({"folds": 2, "fold": 0, "group_pattern": r"^(p)(\d+)"}, r"has 2 capture groups: use one"),
    ({"folds": "5", "fold": 0}, r"data.folds='5' must be an integer or null"),
])
def test_bad_fold_settings_fail_before_any_file_is_read(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        check_fold_options(**options)
    with pytest.raises(ValueError, match=message):  # the datamodule's constructor, as well as discover_splits
        from datamodules import FolderDataModule

        FolderDataModule(tmp_path, **options)


@pytest.mark.parametrize("options, message", [
    ({"folds": 18, "fold": 0}, r"data.folds=18 needs at least 18 images, and the data has 17 labelled images"),
    ({"folds": 6, "fold": 0, "group_pattern": GROUPS}, r"needs at least 6 groups, and the data has 5 groups"),
    ({"folds": 2, "fold": 0, "group_pattern": r"^(scan\d+)_"},
     r"matches none of the 17 image keys, e.g. patient00_s000, patient00_s005"),
    ({"folds": 2, "fold": 0, "group_pattern": r"^(patient0[0-3])_"},
     r"matches no group in 3 image key\(s\): patient04_s004, patient04_s009, patient04_s014"),
])
def test_folds_that_do_not_fit_the_data_are_refused(flat, options, message):
    with pytest.raises(ValueError, match=message):
        _splits(flat, **options)


def test_one_key_in_train_and_val_cannot_be_pooled(tmp_path, with_test):
    shutil.copytree(with_test, tmp_path / "d")
    for kind in ("images", "masks"):
        shutil.copy(tmp_path / "d" / "train" / kind / "patient00_s000.png", tmp_path / "d" / "val" / kind)
    _splits(tmp_path / "d")  # the plain split does not mind
    with pytest.raises(ValueError, match=r"share the key 'patient00_s000': cross-validation pools train/ and val/"):
        _splits(tmp_path / "d", folds=2, fold=0)


# --- through the harness: config, start-up, run folder, resume, sweeps ---------------------------------


def _cfg(root, *overrides, output_dir=None):
    return compose_run(["data=folder", f"data.root={root}", "data.num_workers=0", "data.crop_size=32",
                        *overrides], output_dir=output_dir, synthetic=False)


def test_plan_data_logs_the_fold_and_the_run_folder_gets_splits_json(flat, tmp_path, caplog):
    from segtrain.data_plan import plan_data, save_splits

    cfg = _cfg(flat, "data.folds=3", "data.fold=2", output_dir=tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="segtrain.data_plan"):
        fingerprint = plan_data(cfg)
    assert fingerprint["splits"]["val"] + fingerprint["splits"]["train"] == 17
    cached = splits_cache_path(cfg.paths.cache_dir, _keys(_splits(flat)["train"] + _splits(flat)["val"]), 3, 0, None)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("fold 2 of 3"))
    val = len(json.loads(cached.read_text())[2]["val"])
    assert line == f"fold 2 of 3: {17 - val} train / {val} val images (splits {cached})"
    save_splits(cfg, str(tmp_path / "run"))
    assert (tmp_path / "run" / "splits.json").read_text() == cached.read_text()
    plain = tmp_path / "plain"
    save_splits(_cfg(flat), str(plain))  # no folds: no splits.json
    assert not (plain / "splits.json").exists()


def test_config_types_and_older_runs_resume(flat):
    from segtrain.resume import check_resume_config
    from segtrain.validation import check_types

    check_types(_cfg(flat, "data.folds=5", "data.fold=0", "data.group_pattern='^(patient\\d+)_'"))
    with pytest.raises(ValueError, match=r"data.folds='five' must be an integer or null"):
        check_types(_cfg(flat, "data.folds=five"))
    with pytest.raises(ValueError, match=r"data.folds=1 must be >= 2"):
        check_types({"data": {"folds": 1}})
    from omegaconf import OmegaConf

    new = OmegaConf.to_container(_cfg(flat), resolve=False)
    old = json.loads(json.dumps(new))
    for key in ("folds", "fold", "split_file", "group_pattern"):
        old["data"].pop(key)
    check_resume_config(old, new, "old.ckpt")  # written before folds existed: the single split, as now
    with pytest.raises(ValueError, match="data.fold"):
        check_resume_config(old, {**new, "data": {**new["data"], "folds": 5, "fold": 1}}, "old.ckpt")


def test_a_fold_is_a_swept_key_of_the_optuna_search(flat):
    from hydra import compose, initialize_config_dir
    from hydra_plugins.segtrain_optuna_sweeper import _settings

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=["hparams_search=optuna", "data=folder", f"data.root={flat}", "data.folds=5"])
    settings = {k: v for k, v in cfg.hydra.sweeper.items() if k not in ("_target_", "_recursive_")}
    read = _settings.read_settings(settings, cfg, ["data.fold=choice(0,1,2,3,4)"])
    assert list(read.space.distributions["data.fold"].choices) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_multirun_over_folds_records_each_fold(flat, tmp_path):
    """``train.py -m data=folder data.folds=2 data.fold=0,1``: each job its fold, the same splits.json."""
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    args = ["-m", "data=folder", f"data.root={flat}", "data.folds=2", "data.fold=0,1", "data.num_workers=0",
            "data.batch_size=4", "data.crop_size=32", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=2",
            "callbacks.prediction_grid=null",
            *TINY_TRAINER, f"hydra.sweep.dir={sweep}", f"paths.log_dir={tmp_path / 'logs'}"]
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env={**env, "PYTHONWARNINGS": "ignore"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stored = sorted((tmp_path / "logs" / "cache" / "splits").glob("splits-*.json"))
    assert len(stored) == 1
    for job in ("0", "1"):
        folder = sweep / job
        assert yaml.safe_load((folder / "config.yaml").read_text())["data"]["fold"] == int(job)
        assert (folder / "splits.json").read_text() == stored[0].read_text()
        val = len(json.loads(stored[0].read_text())[int(job)]["val"])
        assert f"fold {job} of 2: {17 - val} train / {val} val images" in (folder / "train.log").read_text()
