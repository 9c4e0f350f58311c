"""Shared fixtures: one built testbed model per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def testbed_path():
    """The testbed model directory, built once (cached under $ALIGNKIT_CACHE)."""
    from alignkit.testbed import ensure_testbed

    return ensure_testbed(progress=False)


@pytest.fixture(scope="session")
def testbed_backend(testbed_path):
    """The testbed model behind the local Hugging Face backend."""
    from alignkit.models import load_backend

    backend = load_backend("testbed", batch_size=64)
    yield backend
    backend.close()
