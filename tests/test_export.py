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
