"""Small helpers shared by the harness."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate


def build(node: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, ...)``, but a ``ValueError``/``FileNotFoundError``/``TypeError``
    raised by the object's own constructor reaches the user as itself.

    Hydra wraps every constructor error in ``InstantiationException`` whose message starts with
    "Error in call to target ..."; our classes raise messages that name the problem and the fix,
    and callers (tests, sweeps) match on the error type. Other errors keep Hydra's wrapper, which
    names the ``_target_``.
    """
    try:
        return instantiate(node, *args, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ValueError, FileNotFoundError, TypeError)) and not isinstance(cause, InstantiationException):
            raise cause from None
        raise
