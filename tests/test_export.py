"""scripts/export.py: the exported ONNX model (run with onnxruntime) and TorchScript match PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from reliability_helpers import load_script, run_script, trained_checkpoint

from segtrain.inference import load_inference_model


def _pytorch_logits(net, batch: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return net(batch).numpy()


@pytest.mark.slow
def test_export_cli_onnx_and_torchscript_match_pytorch(tmp_path):
    """The docs/predict-export.md command with the default (dynamo) exporter; checked at batch sizes it was not traced with."""
    ckpt = trained_checkpoint("binary", 1)
    out = tmp_path / "model.onnx"
    proc = run_script(["scripts/export.py", f"ckpt_path={ckpt}", f"output={out}"])
    assert "onnxruntime vs PyTorch: max |diff|" in proc.stdout
    assert out.is_file() and not (tmp_path / "model.onnx.data").exists()  # one self-contained file
    onnx.checker.check_model(str(out))

    net = load_inference_model(ckpt).net
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and isinstance(inp.shape[0], str)  # a named, dynamic batch axis
    assert inp.shape[1:] == [3, 32, 32]  # the training data.image_size
    scripted = torch.jit.load(str(tmp_path / "model.torchscript.pt"))
    for batch_size in (1, 5):
        batch = torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(batch_size))
        expected = _pytorch_logits(net, batch)
        (onnx_logits,) = session.run(["logits"], {"image": batch.numpy()})
        assert onnx_logits.shape == (batch_size, 1, 32, 32)
        np.testing.assert_allclose(onnx_logits, expected, atol=1e-4, rtol=0)
        with torch.no_grad():
            np.testing.assert_allclose(scripted(batch).numpy(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_dynamic_image_size(tmp_path, exporter):
    ckpt = trained_checkpoint("multiclass", 3)
    export = load_script("export")
    args = export.parse_overrides(
        export.ExportArgs,
        [f"ckpt_path={ckpt}", f"output={tmp_path / 'm.onnx'}", f"exporter={exporter}", "dynamic_size=true",
         "torchscript=null", "weights_dir=null", "check=false"],
    )
    written = export.export(args)
    assert set(written) == {"onnx"}
    net = load_inference_model(ckpt).net
    session = ort.InferenceSession(written["onnx"], providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 64, 64), (1, 3, 96, 160)]:
        batch = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        (onnx_logits,) = session.run(["logits"], {"image": batch.numpy()})
        assert onnx_logits.shape == (shape[0], 3, *shape[2:])
        np.testing.assert_allclose(onnx_logits, _pytorch_logits(net, batch), atol=1e-4, rtol=0)


def test_safetensors_folder_round_trip(tmp_path):
    """export.py's weights folder: identical logits from predict's loader and from smp.from_pretrained; masks too."""
    import json

    import segmentation_models_pytorch as smp
    from safetensors.torch import load_file

    ckpt = trained_checkpoint("multiclass", 3)
    export = load_script("export")
    written = export.export(export.parse_overrides(
        export.ExportArgs, [f"ckpt_path={ckpt}", f"output={tmp_path / 'm.onnx'}", "exporter=legacy", "torchscript=null",
                            "check=false"],
    ))
    folder = tmp_path / "m-weights"
    assert written["weights"] == str(folder)
    meta = json.loads((folder / "config.json").read_text())["_segtrain"]
    assert (meta["task"], meta["num_classes"], meta["image_size"]) == ("multiclass", 3, 32)
    assert [t["_target_"] for t in meta["preprocessing"].values()] == ["albumentations.Resize", "albumentations.Normalize"]
    reference = load_inference_model(ckpt)
    assert set(load_file(str(folder / "model.safetensors"))) == set(reference.net.state_dict())

    shared = load_inference_model(folder)
    assert (shared.task, shared.num_classes) == ("multiclass", 3)
    plain_smp = smp.from_pretrained(str(folder)).eval()
    batch = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference.net(batch)
        assert torch.equal(shared.net(batch), expected)
        assert torch.equal(plain_smp(batch), expected)
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    assert np.array_equal(shared.transform(image=image)["image"], reference.transform(image=image)["image"])


def test_safetensors_folder_transforms_pass_the_allow_list(tmp_path):
    """config.json is data from elsewhere too: a transform target off the list is refused."""
    import json

    from segtrain.pretrained import save_pretrained
    from segtrain.trust import UntrustedCheckpointError

    model = load_inference_model(trained_checkpoint("binary", 1))
    folder = save_pretrained(model.net, model.config, tmp_path / "w")
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    config["_segtrain"]["preprocessing"]["evil"] = {"_target_": "pathlib.Path.write_text", "_args_": ["x", "y"]}
    (tmp_path / "w" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UntrustedCheckpointError, match=r"config.json._segtrain.preprocessing.evil._target_.*trust_checkpoint=true"):
        load_inference_model(folder)
