"""model.encoder_weights: a local file loaded as data and mapped onto the encoder; a readable offline error.

Nothing here touches the network: every test runs with socket connections refused (:func:`no_network`),
and the hub download is simulated failing where a test needs it.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from safetensors.torch import save_file

from reliability_helpers import compose_run
from segtrain import encoder_weights as ew
from segtrain.network import build_network

SMALL_TU = {"encoder_depth": 4, "decoder_channels": (64, 32, 16, 16)}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Refuse every socket connection, as a machine without internet does (and so nothing can download)."""
    def refuse(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known (no network in tests)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def random_encoder_file(tmp_path: Path, name: str = "resnet18") -> tuple[Path, dict]:
    state = smp.Unet(name, encoder_weights=None).encoder.state_dict()
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    return path, state


def test_patch_first_conv_is_where_the_project_imports_it():
    # segtrain/encoder_weights.py imports smp's private patch_first_conv (smp 0.6.0); if smp moves it, this fails.
    from segmentation_models_pytorch.encoders._utils import patch_first_conv

    assert ew.patch_first_conv is patch_first_conv


def test_is_weights_path(tmp_path):
    (tmp_path / "w").write_bytes(b"")
    assert ew.is_weights_path("/data/w") and ew.is_weights_path("w.safetensors") and ew.is_weights_path(str(tmp_path / "w"))
    assert not ew.is_weights_path("imagenet") and not ew.is_weights_path(None)


def test_smp_state_dict_loads_exactly(tmp_path, caplog):
    path, state = random_encoder_file(tmp_path)
    with caplog.at_level(logging.INFO, logger="segtrain.encoder_weights"):
        net = build_network("unet", "resnet18", "binary", 1, encoder_weights=str(path))
    loaded = net.encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert f"loaded {len(state)} of the encoder's {len(state)} tensors" in caplog.text


def test_timm_checkpoint_dict_loads_into_tu_encoder(tmp_path, caplog):
    state = timm.create_model("resnet18").state_dict()
    path = tmp_path / "timm.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)  # a training checkpoint around the state dict
    with caplog.at_level(logging.INFO, logger="segtrain.encoder_weights"):
        net = build_network("unet", "tu-resnet18", "binary", 1, encoder_weights=str(path), **SMALL_TU)
    loaded = net.encoder.state_dict()
    assert all(torch.equal(loaded[k], state[k.removeprefix("model.")]) for k in loaded)
    # depth 4: timm's layer4 and fc are in the file only, and the log says so.
    assert "matching nothing in the encoder (ignored): layer4.0.conv1.weight" in caplog.text


def test_safetensors_and_whole_model_prefix(tmp_path):
    full = smp.Unet("resnet18", encoder_weights=None).state_dict()  # encoder.*, decoder.*, segmentation_head.*
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in full.items()}, str(path))
    net = build_network("unet", "resnet18", "binary", 1, encoder_weights=str(path))
    assert all(torch.equal(v, full[f"encoder.{k}"]) for k, v in net.encoder.state_dict().items())


def test_four_channels_from_a_three_channel_file_adapted_as_smp_does(tmp_path):
    path, state = random_encoder_file(tmp_path)
    net = build_network("unet", "resnet18", "binary", 1, encoder_weights=str(path), in_channels=4)
    expected = torch.nn.Conv2d(3, 64, 7, bias=False)
    expected.weight.data.copy_(state["conv1.weight"])
    ew.patch_first_conv(expected, new_in_channels=4, pretrained=True)
    assert torch.equal(net.encoder.conv1.weight, expected.weight)
    assert torch.allclose(net.encoder.conv1.weight[:, 3], state["conv1.weight"][:, 0] * 3 / 4)
    one = build_network("unet", "resnet18", "binary", 1, encoder_weights=str(path), in_channels=1)
    assert torch.allclose(one.encoder.conv1.weight[:, 0], state["conv1.weight"].sum(1))


class Payload:
    marker = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


def test_pickled_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    payload = Payload()
    payload.marker = str(marker)
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": payload}, path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="Refusing .*evil.pth.*pickled objects"):
        build_network("unet", "resnet18", "binary", 1, encoder_weights=str(path))
    assert not marker.exists()


def test_other_architecture_is_a_clear_error(tmp_path):
    torch.save(timm.create_model("vit_tiny_patch16_224", img_size=32).state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ValueError, match=r"none of its .* tensors matches .*file's keys look like \[.*encoder's like \["):
        build_network("unet", "resnet18", "binary", 1, encoder_weights=str(tmp_path / "vit.pth"))


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.encoder_weights=.*nope.pth does not exist"):
        build_network("unet", "resnet18", "binary", 1, encoder_weights=str(tmp_path / "nope.pth"))


def test_hub_download_failure_is_one_message(monkeypatch, tmp_path):
    # Reachable host, but the hub download itself fails as huggingface_hub does offline.
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(ew, "reachable", lambda url, timeout=5.0: None)
    monkeypatch.setattr(ew, "is_cached", lambda name, weights: False)

    def fail(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", fail)
    with pytest.raises(ValueError, match="could not be downloaded .*LocalEntryNotFoundError.*fetch_weights.py.*/path/to/encoder.pth"):
        build_network("unet", "resnet18", "binary", 1, encoder_weights="imagenet")


def test_cached_weights_are_used_offline(monkeypatch, tmp_path):
    # The files in the hub cache: huggingface_hub is switched offline around the build (no request at all).
    seen = []

    def cached_download(*args, **kwargs):
        from huggingface_hub import constants

        seen.append(constants.HF_HUB_OFFLINE)
        path = tmp_path / "w.safetensors"
        save_file(smp.encoders.get_encoder("resnet18").state_dict(), str(path))
        return str(path)

    monkeypatch.setattr(ew, "is_cached", lambda name, weights: True)
    monkeypatch.setattr(smp.encoders, "hf_hub_download", cached_download)
    build_network("unet", "resnet18", "binary", 1, encoder_weights="imagenet")
    from huggingface_hub import constants

    assert seen and all(seen) and not constants.HF_HUB_OFFLINE


def test_unknown_weight_set_is_a_clear_error():
    with pytest.raises(ValueError, match="neither a weight set of resnet18 nor a file path"):
        build_network("unet", "resnet18", "binary", 1, encoder_weights="nonsense")


def test_offline_imagenet_fails_before_training(tmp_path):
    from segtrain.errors import reset_training_started, training_started
    from segtrain.run import train

    reset_training_started()
    with pytest.raises(ValueError, match="could not be downloaded"):
        train(compose_run(["model.encoder_weights=imagenet"], tmp_path / "run"))
    assert not training_started()


@pytest.mark.slow
def test_local_file_run_predicts_without_the_file(tmp_path):
    from segtrain.inference import load_inference_model
    from segtrain.run import train

    state = timm.create_model("resnet18").state_dict()
    weights = tmp_path / "enc.pth"
    torch.save(state, weights)
    train(compose_run([f"model.encoder_weights={weights}"], tmp_path / "run"))
    weights.unlink()
    model = load_inference_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert model.net(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)


@pytest.mark.slow
def test_offline_imagenet_console_has_no_traceback(tmp_path):
    import os
    import subprocess
    import sys

    from reliability_helpers import ROOT

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}  # the console as a user sees it
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", "import socket\n"
                       "def refuse(*a, **k): raise socket.gaierror(-2, 'no network')\n"
                       "socket.create_connection = refuse\n"
                       "import sys, runpy; sys.argv = ['train.py'] + sys.argv[1:]\n"
                       "runpy.run_path('train.py', run_name='__main__')",
                       "data.image_size=32", "data.num_samples=16", "trainer.accelerator=cpu", "trainer.max_epochs=1",
                       "model.encoder_weights=imagenet", f"paths.output_dir={tmp_path}/run"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "could not be downloaded" in out and "fetch_weights.py" in out
    assert "Traceback" not in out, out
