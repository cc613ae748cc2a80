"""Shared helpers for the compression tests."""

from __future__ import annotations

import pytest

from qtd.compress.backend import numba_available as _numba_available

CPU_BACKENDS = ["reference"] + (["numba"] if _numba_available() else [])


def requires_numba() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not _numba_available(), reason="numba is not installed")
