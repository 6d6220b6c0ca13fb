"""Export a study's best trial as a production config: `python -m search.export`.

    python -m search.export --study effnet_b4 -o best.yaml
    python -m search.export --study studies/stanford_dogs_b0.yaml -o best.yaml
    python -m trainers.train --config best.yaml

The file is the exact config the best trial trained with (as its worker resolved it), plus a
`provenance` block: study, trial number, value, best epoch, storage and export time. Training
ignores provenance; `trainers.train` copies it into the production run's MLflow tags.
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
from search.storage.urls import (
    DEFAULT_STORAGE,
    StorageError,
    check_storage_url,
    make_storage,
    redact,
)
from search.study.files import is_study_file, load_study_file
from search.vocabulary import StudyAttr, TrialAttr
from trainers.config.schema import Provenance, TrainConfig
from trainers.errors import TrainerInputError
from trainers.installation import add_version_option
from trainers.redaction import hide_passwords


class ExportError(Exception):
    """The study has nothing to export; reported as one line."""


def best_config(study_name: str, storage: str) -> TrainConfig:
    """The best completed trial's config, with provenance."""
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
        best = study.best_trial
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


def main(argv: Sequence[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study_name = (
            load_study_file(Path(args.study)).spec.name if is_study_file(args.study) else args.study
        )
        config = best_config(study_name, args.storage)
        path = write_export(config, Path(args.output))
    except (ExportError, StorageError, TrainerInputError) as error:
        print(f"error: {hide_passwords(str(error))}", file=sys.stderr)
        return 2
    assert config.provenance is not None
    print(
        f"wrote {path}: trial {config.provenance.trial_number} of {study_name}, "
        f"val_accuracy {config.provenance.value:.4f} at epoch {config.provenance.best_epoch}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
