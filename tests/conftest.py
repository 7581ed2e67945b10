"""Shared fixtures. Shared plain helpers (tiny configs, inputs, writers, runners) are in helpers.py, which test
modules import by name; no test module imports another."""

import pytest
from helpers import SMALL


@pytest.fixture
def small_kwargs():
    return dict(SMALL)
