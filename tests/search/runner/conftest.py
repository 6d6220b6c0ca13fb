"""Fixtures of the coordinator tests (tests/search/runner/scripted_studies.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.search.runner.scripted_studies import TinyStudy


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    # One MLflow store for the module (creating one takes seconds); each test is its own study,
    # hence its own experiment.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tiny(tmp_path: Path, tracking_uri: str, request: pytest.FixtureRequest) -> TinyStudy:
    return TinyStudy(tmp_path, tracking_uri, request.node.name.removeprefix("test_"))
