"""A password in the storage URL or the tracking URI never leaves the command line.

A study runs with `--storage postgresql://postgres:<secret>@...` (the shared server trusts
local connections, so any password is accepted and none is needed) and `--tracking-uri
http://tester:<secret>@...` (a live `mlflow server`, which ignores the credentials), then is
exported; commands that fail on such URLs print their error. The secret is then searched for
in everything a user or a colleague could see: every line printed, every file written (logs,
artifacts, exported YAML, spools), the MLflow server's store (params, tags, metrics, artifact
copies) and every study and trial attribute in the Optuna storage.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import optuna
import pytest
from sqlalchemy.engine import make_url

from tests.search.servers import free_port, mlflow_server_command, started, wait_until_ready
from tests.search.test_cli import _run

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _files_holding(secret: str, folder: Path) -> list[Path]:
    needle = secret.encode()
    return [path for path in folder.rglob("*") if path.is_file() and needle in path.read_bytes()]


def test_a_password_never_appears_in_output_files_mlflow_or_the_study(
    databases: tuple[str, str], tmp_path: Path
) -> None:
    secret = f"S3cr3t-{uuid.uuid4().hex[:12]}"
    storage = make_url(databases[0]).set(password=secret).render_as_string(hide_password=False)
    server_folder, work = tmp_path / "server", tmp_path / "work"
    server_folder.mkdir()
    work.mkdir()
    port = free_port()
    log = server_folder / "mlflow-server.log"
    outputs: list[str] = []
    with started(mlflow_server_command(server_folder, port), log) as server:
        wait_until_ready(server, f"http://127.0.0.1:{port}/health", log)
        tracking = f"http://tester:{secret}@127.0.0.1:{port}"
        study = _run(
            "tests.search.scripted_run",
            ["--study", "smoke", "--n-trials", "3", "--storage", storage,
             "--tracking-uri", tracking, "--output", "out"],
            work,
        )  # fmt: skip
        assert study.returncode == 0, study.stderr[-3000:]
        exported = _run(
            "search.export", ["--study", "smoke", "--storage", storage, "-o", "best.yaml"], work
        )
        assert exported.returncode == 0, exported.stderr[-3000:]
        failures = [
            # An unreachable database, an unreachable tracking server, a study not there.
            _run(
                "search.run",
                ["--study", "smoke", "--storage", f"postgresql://postgres:{secret}@127.0.0.1:1/x"],
                work,
            ),
            _run("search.run", ["--study", "smoke", "--tracking-uri", tracking.replace(
                str(port), str(free_port()))], work),
            _run("search.export", ["--study", "nope", "--storage", storage], work),
        ]
        for failed in failures:
            assert failed.returncode == 2 and failed.stderr.startswith("error: "), failed.stderr
        for done in [study, exported, *failures]:
            outputs += [done.stdout, done.stderr]
    # The commands did name the stores, without the password.
    assert "postgres:***@127.0.0.1" in study.stdout
    assert f"tester:***@127.0.0.1:{port}" in study.stdout
    assert "***@127.0.0.1" in (work / "best.yaml").read_text()
    assert all(secret not in text for text in outputs)
    # Logs, artifacts, the export; the server's store and its copies of the artifacts.
    assert _files_holding(secret, work) == []
    assert _files_holding(secret, server_folder) == []
    rdb = optuna.storages.RDBStorage(storage)
    study_id = rdb.get_study_id_from_name("smoke")
    trials = rdb.get_all_trials(study_id)
    attributes = [
        rdb.get_study_user_attrs(study_id),
        rdb.get_study_system_attrs(study_id),
        *({**t.user_attrs, **t.system_attrs, **t.params} for t in trials),
    ]
    rdb.engine.dispose()
    assert len(trials) == 3
    assert secret not in json.dumps(attributes, default=str)
