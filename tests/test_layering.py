"""Who may import what: datamodules below segtrain, Lightning internals only in lightning_compat.

Checked on the source (AST), so a lazy import inside a function counts as well, plus one real
import in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = [*sorted((ROOT / "segtrain").glob("*.py")), *sorted((ROOT / "datamodules").glob("*.py")),
           *sorted((ROOT / "fingerprint").glob("*.py")),
           *sorted((ROOT / "scripts").glob("*.py")), ROOT / "train.py"]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, imported names)`` for every import statement in ``path`` (relative ones resolved)."""
    package = path.parent.name
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = f"{package}.{module}".rstrip(".")
            found.append((module, [alias.name for alias in node.names]))
    return found


def test_datamodules_never_import_segtrain():
    offending = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / "datamodules").glob("*.py"))
        for module, _ in _imports(path)
        if module == "segtrain" or module.startswith("segtrain.")
    ]
    assert not offending, f"datamodules must not depend on the harness (segtrain imports datamodules): {offending}"


def test_fingerprint_reads_through_datamodules_and_never_imports_the_harness():
    """data -> fingerprint -> train: fingerprint/ may use datamodules' readers, never segtrain, Lightning or Hydra."""
    offending = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / "fingerprint").glob("*.py"))
        for module, _ in _imports(path)
        if module.split(".")[0] in ("segtrain", "lightning", "hydra", "omegaconf")
    ]
    assert not offending, offending


def test_importing_datamodules_loads_no_segtrain_module():
    code = "import sys, datamodules; print(sorted(m for m in sys.modules if m.split('.')[0] == 'segtrain'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_lightning_internals_and_mock_only_in_the_compat_module():
    """Private Lightning names (``_x``, ``lightning.x._y``) in one module, which says why; no
    ``unittest.mock`` in product code at all."""
    private, mocks = [], []
    for path in PRODUCT:
        for module, names in _imports(path):
            if module.split(".")[0] == "lightning" and (
                any(part.startswith("_") for part in module.split(".")) or any(n.startswith("_") for n in names)
            ):
                private.append(f"{path.relative_to(ROOT)}: {module} {names}")
            if module.startswith("unittest"):
                mocks.append(f"{path.relative_to(ROOT)}: {module}")
    assert all(p.startswith("segtrain/lightning_compat.py") for p in private), private
    assert private, "the compat module's own imports were not found: the scan is broken"
    assert not mocks, mocks
