"""The README section's example (docs/readme_losses.md) runs as written."""

import re
import warnings
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "readme_losses.md"


def test_readme_losses_example_runs(capsys):
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/readme_losses.md has no python example"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(blocks[0], str(DOC), "exec"), {"__name__": "readme_example"})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    first = float(lines[0].split()[0])
    assert 0.0 < first < 2.0


@pytest.mark.parametrize("name", ["BCELoss", "CrossEntropyLoss", "DiceLoss", "JaccardLoss", "TverskyLoss",
                                  "FocalLoss", "CombinedLoss", "empty_class", "sync_dist", "set_checks"])
def test_readme_losses_documents(name):
    assert name in DOC.read_text()
