"""Fixtures for the seglosses unit tests (helpers live in _loss_cases.py)."""

import pytest


@pytest.fixture(autouse=True)
def _checks_on():
    """Every test starts with value checks on and leaves them on."""
    import seglosses

    previous = seglosses.set_checks(True)
    yield
    seglosses.set_checks(previous)
