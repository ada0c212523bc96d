"""README's section "Use the losses in your own code": its example runs as written, its table
and semantics name every public loss and option."""

import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Use the losses in your own code"


def _section() -> str:
    text = README.read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    body = text.split(SECTION, 1)[1]
    return body.split("\n## ", 1)[0]  # up to the next top-level section


def test_readme_losses_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", _section(), flags=re.S)
    assert blocks, f"README section {SECTION!r} has no python example"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(blocks[0], str(README), "exec"), {"__name__": "readme_example"})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    first = float(lines[0].split()[0])
    assert 0.0 < first < 2.0


@pytest.mark.parametrize("name", ["BCELoss", "CrossEntropyLoss", "DiceLoss", "JaccardLoss", "TverskyLoss",
                                  "FocalLoss", "CombinedLoss", "empty_class", "sync_dist", "set_checks"])
def test_readme_losses_documents(name):
    assert name in _section()
