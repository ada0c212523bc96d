"""The dataset fingerprint: what the data is, read once before training, and the config checked against it.

:func:`compute_fingerprint` (scan.py) reads every file once -- headers, masks, a sample of the
training pixels -- into a JSON-able dict, cached by file sizes and times (cache.py);
:func:`check_fingerprint` (checks.py) resolves ``auto`` settings and names every mismatch with
the config at once; :func:`summary_lines` and :func:`write_fingerprint` (report.py) show and keep
it. The package sits below the harness: it imports ``datamodules.io`` and ``datamodules.masks``,
never ``segtrain``.
"""

from .checks import Resolved, check_fingerprint
from .report import summary_lines, write_fingerprint
from .scan import compute_fingerprint

__all__ = ["Resolved", "check_fingerprint", "compute_fingerprint", "summary_lines", "write_fingerprint"]
