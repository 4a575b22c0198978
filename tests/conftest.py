"""Shared pytest fixtures."""

import pytest

import gin


@pytest.fixture(autouse=True)
def _clean_gin():
    """Every test starts and ends with an empty gin configuration (bindings of one test never leak into another)."""
    gin.clear_config()
    yield
    gin.clear_config()
