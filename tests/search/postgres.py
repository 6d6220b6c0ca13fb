"""Fresh PostgreSQL databases for a test, created and dropped on the shared server.

The server is FINETUNE_SEARCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test,
trust authentication); tests never stop or reconfigure it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get(
    "FINETUNE_SEARCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def _admin() -> sqlalchemy.Engine:
    engine = sqlalchemy.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.OperationalError as error:
        pytest.fail(f"PostgreSQL at {ADMIN_URL} is not reachable ({error.orig}); start it first")
    return engine


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """A fresh database for Optuna and one for MLflow, dropped afterwards."""
    admin = _admin()
    names = [f"fts_{uuid.uuid4().hex[:10]}", f"fts_{uuid.uuid4().hex[:10]}_mlflow"]
    with admin.connect() as connection:
        for name in names:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    base = make_url(ADMIN_URL)
    urls = [base.set(database=name).render_as_string(hide_password=False) for name in names]
    try:
        yield urls[0], urls[1]
    finally:
        with admin.connect() as connection:
            for name in names:
                connection.execute(
                    sqlalchemy.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                    ),
                    {"n": name},
                )
                # FORCE: a coordinator's connection that comes back late cannot block it.
                connection.execute(
                    sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                )
        admin.dispose()
