"""seglosses: segmentation losses in pure PyTorch (BCE, CE, Dice, Jaccard, Tversky, Focal, combos).

    from seglosses import DiceLoss, BCELoss, CombinedLoss
    loss = CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary")}, {"bce": 0.5, "dice": 0.5})

The maths lives in :mod:`seglosses.functional`; the modules hold options. Value checks on the
targets run by default; ``seglosses.set_checks(False)`` switches them off for speed.
"""

from . import functional
from ._checks import checks_enabled, set_checks
from .bce import BCELoss
from .ce import CrossEntropyLoss
from .combo import CombinedLoss
from .dice import DiceLoss, JaccardLoss, TverskyLoss
from .focal import FocalLoss

__all__ = [
    "BCELoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "JaccardLoss",
    "TverskyLoss",
    "FocalLoss",
    "CombinedLoss",
    "functional",
    "set_checks",
    "checks_enabled",
]
