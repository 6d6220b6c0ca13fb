"""Export a study's best trial as a production config: `python -m search.export`.

    python -m search.export --study effnet_b4 -o best.yaml
    python -m search.export --study studies/stanford_dogs_b0.yaml -o best.yaml
    python -m trainers.train --config best.yaml

The file is the exact config the best trial trained with (as its worker resolved it), plus a
`provenance` block: study, trial number, value, best epoch, storage and export time. Training
ignores provenance; `trainers.train` copies it into the production run's MLflow tags.

    python -m search.export --study effnet_b4 --confirm 3 -o best.yaml

`--confirm K` first re-trains the K best trials with `--confirm-seeds` other seeds each (2 by
default), in worker processes like the study's trials, and exports the trial with the best
mean of its re-runs; the mean, its standard error, the values and the re-runs' MLflow ids go
into `provenance.confirmation` (`search.runner.confirmation`). The same command again resumes
an interrupted confirmation.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.engines.base import EngineChoice
from search.runner.active_trial import WorkerEntry
from search.runner.confirmation import ConfirmationError, confirm
from search.runner.worker import run_worker
from search.storage.urls import (
    DEFAULT_STORAGE,
    StorageError,
    check_storage_url,
    make_storage,
    redact,
)
from search.study.files import is_study_file, load_study_file, resolve_study
from search.study.registry import StudySpec, UnknownStudyError
from search.vocabulary import StudyAttr, TrialAttr
from trainers.config.schema import Confirmation, Provenance, TrainConfig
from trainers.errors import TrainerInputError
from trainers.installation import add_version_option, require_tensorflow
from trainers.outputs import ensure_writable_folder
from trainers.redaction import hide_passwords
from trainers.tracking import check_tracking_uri, resolve_tracking_uri


class ExportError(Exception):
    """The study has nothing to export; reported as one line."""


#: Mistakes and missing things that are one `error:` line, with nothing written.
_ONE_LINE_ERRORS = (
    ExportError,
    StorageError,
    TrainerInputError,
    UnknownStudyError,
    ConfirmationError,
)


def best_config(study_name: str, storage: str, number: int | None = None) -> TrainConfig:
    """The config of trial `number` (None: the best completed trial), with provenance."""
    check_storage_url(storage)
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        # Opening it would create an empty database; there is nothing to export.
        raise ExportError(f"no study storage at {storage}; run the study first or pass --storage")
    rdb = make_storage(storage)
    try:
        try:
            study = optuna.load_study(study_name=study_name, storage=rdb)
        except KeyError:
            names = optuna.get_all_study_names(rdb)
            raise ExportError(
                f"no study {study_name!r} in {redact(storage)}; "
                f"studies there: {', '.join(names) or 'none'}"
            ) from None
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not completed:
            raise ExportError(f"study {study_name!r} has no completed trial yet")
        best = study.best_trial if number is None else study.get_trials(deepcopy=False)[number]
        engine = study.user_attrs.get(StudyAttr.ENGINE, EngineChoice().label)
    finally:
        rdb.remove_session()
        rdb.engine.dispose()
    if TrialAttr.CONFIG_YAML not in best.user_attrs:
        raise ExportError(f"trial {best.number} of {study_name!r} has no recorded config")
    config = TrainConfig.from_yaml(
        best.user_attrs[TrialAttr.CONFIG_YAML], origin=f"trial {best.number}"
    )
    provenance = Provenance(
        study=study_name,
        trial_number=best.number,
        value=float(best.value or 0.0),
        best_epoch=best.user_attrs.get(TrialAttr.BEST_EPOCH),
        storage=redact(storage),
        exported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        engine=engine,
        engine_trial=best.user_attrs.get(TrialAttr.KERAS_TUNER_TRIAL),
    )
    return config.model_copy(update={"provenance": provenance})


def write_export(config: TrainConfig, path: Path) -> Path:
    assert config.provenance is not None
    origin = config.provenance
    header = (
        f"# Best trial of study {origin.study!r}: trial {origin.trial_number}, "
        f"best val_accuracy {origin.value:.4f}.\n"
        f"# Train it with: python -m trainers.train --config {path}\n"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + config.to_yaml(), encoding="utf-8")
    except OSError as error:
        raise ExportError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def _confirm(
    spec: StudySpec, args: argparse.Namespace, worker: WorkerEntry
) -> tuple[int, Confirmation]:
    """Run (or finish) the confirmation `args` asks for; the winner and what it reached."""
    if args.confirm < 1 or args.confirm_seeds < 1 or args.workers < 1:
        raise ExportError("--confirm, --confirm-seeds and --workers must be at least 1")
    check_storage_url(args.storage)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(tracking_uri)
    require_tensorflow()  # the re-runs train
    runs = Path(args.runs or Path("runs") / "search" / spec.name / "confirm")
    confirmed = confirm(
        spec,
        candidates=args.confirm,
        seeds=args.confirm_seeds,
        storage=args.storage,
        tracking_uri=tracking_uri,
        output_dir=ensure_writable_folder(runs),
        workers=args.workers,
        worker=worker,
    )
    print(f"confirmed {len(confirmed)} trials with {args.confirm_seeds} other seeds each:")
    for candidate in confirmed:
        print(f"  {candidate.describe()}")
    winner = confirmed[0]
    return winner.number, winner.confirmation(len(confirmed))


def main(argv: Sequence[str] | None = None, *, worker: WorkerEntry = run_worker) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m search.export",
        description="Write the best trial's config as YAML for python -m trainers.train.",
    )
    add_version_option(parser)
    parser.add_argument("--study", required=True, help="the study's name, or its study file")
    parser.add_argument(
        "-o", "--output", default="best.yaml", help="file to write (default: %(default)s)"
    )
    parser.add_argument(
        "--storage", default=DEFAULT_STORAGE, help="Optuna storage URL (default: %(default)s)"
    )
    confirming = parser.add_argument_group("confirmation (re-train the best trials first)")
    confirming.add_argument(
        "--confirm",
        type=int,
        metavar="K",
        help="re-train the K best trials with other seeds and export the best mean",
    )
    confirming.add_argument(
        "--confirm-seeds", type=int, default=2, metavar="N", help="seeds per trial (default: 2)"
    )
    confirming.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI of the study (default: $MLFLOW_TRACKING_URI or "
        "sqlite:///mlflow.db)",
    )
    confirming.add_argument("--workers", type=int, default=1, help="concurrent re-runs")
    confirming.add_argument(
        "--runs", help="folder for the re-runs' files (default: runs/search/<study>/confirm)"
    )
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        loaded = resolve_study(args.study) if args.confirm is not None else None
        study_name = (
            load_study_file(Path(args.study)).spec.name if is_study_file(args.study) else args.study
        )
        # The study's best first: a missing store, study or completed trial is one line
        # before anything trains.
        config = best_config(study_name, args.storage)
        confirmation = None
        if loaded is not None:
            number, confirmation = _confirm(loaded.spec, args, worker)
            config = best_config(study_name, args.storage, number)
        if confirmation is not None:
            assert config.provenance is not None
            provenance = config.provenance.model_copy(update={"confirmation": confirmation})
            config = config.model_copy(update={"provenance": provenance})
        path = write_export(config, Path(args.output))
    except _ONE_LINE_ERRORS as error:
        print(f"error: {hide_passwords(str(error))}", file=sys.stderr)
        return 2
    origin = config.provenance
    assert origin is not None
    confirmed = origin.confirmation
    mean = "" if confirmed is None else f", mean {confirmed.mean:.4f} ± {confirmed.stderr:.4f}"
    print(
        f"wrote {path}: trial {origin.trial_number} of {study_name}, "
        f"val_accuracy {origin.value:.4f} at epoch {origin.best_epoch}{mean}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
