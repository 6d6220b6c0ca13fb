"""Fixtures for the search tests: no coordinator a test started outlives it; fresh PostgreSQL
databases (`tests/search/postgres.py`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.search.harness import kill_all
from tests.search.postgres import databases

__all__ = ["databases"]


@pytest.fixture(autouse=True)
def _kill_leftover_coordinators() -> Iterator[None]:
    # A failed assertion or a timeout would otherwise leave coordinators and their workers
    # training, taking the CPU from the rest of the suite.
    yield
    kill_all()
