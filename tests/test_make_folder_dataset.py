"""scripts/make_folder_dataset.py prints a train command that trains at the size it wrote, and
quotes a root with spaces or non-ASCII characters the way Hydra needs."""

from __future__ import annotations

import shlex

import pytest
from hydra import compose, initialize_config_dir
from reliability_helpers import ROOT, load_script


@pytest.mark.parametrize(("folder", "size", "expected"), [("shapes", 64, 64), ("my scans été", 100, 96)])
def test_printed_command_has_the_image_size_and_a_composable_root(tmp_path, capsys, folder, size, expected):
    out = tmp_path / folder
    load_script("make_folder_dataset").main([str(out), "--num-samples", "2", "--image-size", str(size)])
    command = capsys.readouterr().out.split("train on it: python train.py ", 1)[1].strip()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=shlex.split(command))
    assert cfg.data.image_size == expected  # a multiple of 32 near the written size
    assert cfg.data.root == str(out)
