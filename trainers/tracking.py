"""MLflow helpers shared by production training and the search: params, metrics, runs.

Keras-free, so the search coordinator logs through the same code. The tracking URI defaults to
`sqlite:///mlflow.db` in the working directory; MLFLOW_TRACKING_URI or an explicit URI wins.
Browse with `mlflow ui --backend-store-uri sqlite:///mlflow.db`.

Artifacts go beside the store that holds their runs: `mlartifacts/<experiment>/` next to a
SQLite file, as `mlflow server` keeps its own in `./mlartifacts` (`artifact_location`). A
tracking server decides for itself, and so does a file store (its own folder).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainers.config.schema import TrainConfig
from trainers.errors import TrainerInputError
from trainers.redaction import redact

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# Per-epoch records carry these as metrics; epoch is the step, the rest are not curves.
NOT_METRICS = {"epoch"}


def resolve_tracking_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` tracking URI (relative to the working folder
    unless absolute); None for any other URI."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


class TrackingError(TrainerInputError):
    """The MLflow tracking URI is unusable (unreachable server, unwritable store)."""


def check_tracking_uri(uri: str) -> None:
    """Fail fast, in one line, before a run or a study starts logging to `uri`."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(_health_request(uri), timeout=10):
                return
        except urllib.error.HTTPError:
            return  # it answered: reachable (authentication is MLflow's business)
        except OSError as error:
            reason = getattr(error, "reason", error)
            raise TrackingError(
                f"MLflow tracking server {redact(uri)} is unreachable: {reason}"
            ) from None
    database = sqlite_file(uri)
    if database is not None:
        folder = database.parent
    elif uri.startswith("file:") or "://" not in uri:
        folder = Path(uri.removeprefix("file://").removeprefix("file:"))
        folder = folder if folder.is_dir() else folder.parent
    else:
        return  # database URIs are checked when MLflow connects
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise TrackingError(
            f"MLflow tracking URI {redact(uri)}: folder {folder} is missing or not writable"
        )


def _health_request(uri: str) -> urllib.request.Request:
    """GET /health; credentials in the URI (`http://user:password@host`) go in a basic-auth
    header, as MLflow's client sends them (urllib cannot take them in the URL)."""
    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    url = urllib.parse.urlunsplit(parts._replace(netloc=netloc)).rstrip("/") + "/health"
    request = urllib.request.Request(url)
    if parts.username is not None:
        user, password = parts.username, parts.password or ""
        pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
        request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    return request


def quiet_mlflow_logging() -> None:
    """MLflow and alembic log every schema migration at INFO; keep CLI output readable.

    Must run after `import mlflow`, which installs its own logger levels.
    """
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def make_client(tracking_uri: str | None = None) -> Any:
    """An MlflowClient for `tracking_uri` (resolved as above)."""
    from mlflow import MlflowClient

    quiet_mlflow_logging()
    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


#: The folder beside a SQLite tracking store that holds its experiments' artifacts.
ARTIFACTS_FOLDER = "mlartifacts"


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: `mlartifacts/<experiment>` beside a SQLite store.

    None leaves it to MLflow: a tracking server applies its own artifact root, and a file store
    keeps artifacts in its own folder. MLflow's default for any other database is `./mlruns`
    in whatever folder the first run happens to start in.
    """
    database = sqlite_file(tracking_uri)
    if database is None:
        return None
    # One folder per experiment, named after it; its runs are folders named by their ids, so
    # two experiments whose names map to the same folder still never share a file.
    folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment).strip(".") or "experiment"
    return str(database.resolve().parent / ARTIFACTS_FOLDER / folder)


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment `name`, created if needed (its artifacts where `artifact_location`
    says); safe when several processes race."""
    from mlflow.exceptions import MlflowException

    location = artifact_location(client.tracking_uri, name)
    for _ in range(5):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(client.create_experiment(name, artifact_location=location))
        except MlflowException:
            # Another coordinator created it between our lookup and create: look again.
            time.sleep(0.2)
    raise RuntimeError(f"could not create or find MLflow experiment {name!r}")


def config_params(config: TrainConfig) -> dict[str, str]:
    """The config flattened to MLflow params: data.source, phase2.learning_rate, ...

    Plus `unfrozen_units`, the whole units the deepest phase unfreezes (0 for a linear probe),
    so every run can be compared on it, with or without a fine-tune phase.
    """
    flat: dict[str, str] = {}
    raw = config.to_dict()
    raw.pop("provenance", None)
    phases = raw.pop("phases")
    _flatten(raw, "", flat)
    for number, phase in enumerate(phases, start=1):
        _flatten(phase, f"phase{number}.", flat)
    flat["phases"] = str(len(phases))
    flat["unfrozen_units"] = str(config.unfrozen_units)
    return flat


def _flatten(values: Mapping[str, Any], prefix: str, into: dict[str, str]) -> None:
    for key, value in values.items():
        if isinstance(value, Mapping):
            _flatten(value, f"{prefix}{key}.", into)
        else:
            into[f"{prefix}{key}"] = "null" if value is None else str(value)


def log_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(key, str(value)[:6000]) for key, value in params.items()]
    # MLflow accepts at most 100 params per batch call.
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100], synchronous=True)


def log_epoch(client: Any, run_id: str, epoch: int, metrics: Mapping[str, float]) -> None:
    """One epoch's metrics at step = global epoch, so curves line up across phases."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(key, float(value), now, epoch)
        for key, value in metrics.items()
        if key not in NOT_METRICS
    ]
    client.log_batch(run_id, metrics=items, synchronous=True)


def log_files(client: Any, run_id: str, paths: list[Path]) -> None:
    for path in paths:
        client.log_artifact(run_id, str(path))
