"""Production training from a config file: the same trainer code every search trial ran.

    python -m trainers.train --config configs/cpu_small.yaml [--output DIR] [--tracking-uri URI]
                             [--cache-dir DIR]

Prints per-epoch progress; writes model.keras (best-epoch weights), config.yaml (the resolved
config), history.csv and learning_curves.png to the output folder, and logs params, per-epoch
metrics and those files to MLflow (default `sqlite:///mlflow.db`; MLFLOW_TRACKING_URI or
--tracking-uri override it). Bad input is one `error:` line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from trainers.caching.store import GIGABYTE
from trainers.config.schema import TrainConfig, load_config, save_config
from trainers.data.image_folder import scan_data_folders
from trainers.errors import TrainerInputError
from trainers.installation import add_version_option, require_tensorflow
from trainers.model.backbones import check_weights
from trainers.outputs import check_writable_folder, ensure_writable_folder
from trainers.tracking import (
    check_tracking_uri,
    config_params,
    ensure_experiment,
    log_epoch,
    log_files,
    log_params,
    make_client,
    resolve_tracking_uri,
)

DEFAULT_EXPERIMENT = "production"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainers.train",
        description="Train a model from a config file (e.g. one written by search.export).",
    )
    add_version_option(parser)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--output", help="output folder (default: runs/<config name>-<UTC time>)")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    parser.add_argument(
        "--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment (default: %(default)s)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="decode images and compute the frozen backbone's features once into this folder, "
        "and reuse them in later runs (a study's is OUTPUT/cache; default: no cache)",
    )
    parser.add_argument(
        "--cache-budget-gb",
        type=float,
        help="with --cache-dir, the largest cache entry of activations below unfrozen blocks, "
        "in GB (default: a quarter of this machine's memory)",
    )
    return parser.parse_args(argv)


def output_path(output: str | None, config_path: Path) -> Path:
    """`--output`, or runs/<config name>-<UTC time>."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path(output) if output else Path("runs") / f"{config_path.stem}-{stamp}"


def _run_tags(config: TrainConfig, config_path: Path) -> dict[str, str]:
    tags = {"config_file": str(config_path), "entry_point": "trainers.train"}
    if config.provenance is not None:
        # Links the production run back to the search trial it came from.
        for key, value in config.provenance.model_dump().items():
            tags[f"provenance.{key}"] = str(value)
    return tags


def train(
    config_path: Path,
    output: str | None,
    tracking_uri: str | None,
    experiment: str,
    cache_dir: Path | None = None,
    cache_budget_bytes: int | None = None,
) -> int:
    require_tensorflow()
    config = load_config(config_path)
    # A missing weights file, a bad data folder, an unusable tracking URI, an unwritable output
    # folder: each is one line before TensorFlow is imported (seconds) and before a run or a
    # file is created.
    check_weights(config.model.weights)
    folders = scan_data_folders(config.data)
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    destination = output_path(output, config_path)
    check_writable_folder(destination)

    # Importing the Keras side only now keeps `--help` and every error above instant.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from trainers.data.pipelines import load_datasets
    from trainers.fit.loop import fit
    from trainers.fit.plots import plot_learning_curves

    # What only TensorFlow can check (a TFDS dataset that cannot be loaded) fails here, still
    # before the folder is made.
    datasets = load_datasets(config, cache_dir=cache_dir, folders=folders)
    folder = ensure_writable_folder(destination)
    client = make_client(uri)
    run = client.create_run(
        ensure_experiment(client, experiment),
        run_name=config_path.stem,
        tags=_run_tags(config, config_path),
    )
    run_id = run.info.run_id
    log_params(client, run_id, config_params(config))
    print(f"MLflow run {run_id} in experiment {experiment!r} at {uri}", flush=True)

    def report(epoch: int, metrics: Mapping[str, float]) -> None:
        # A tracking hiccup must not cost a production training its result.
        try:
            log_epoch(client, run_id, epoch, metrics)
        except Exception as error:
            print(f"warning: MLflow did not take epoch {epoch}: {error}", file=sys.stderr)

    try:
        result = fit(
            config,
            report=report,
            datasets=datasets,
            cache_dir=cache_dir,
            cache_budget_bytes=cache_budget_bytes,
        )
        model_path = folder / "model.keras"
        result.model.save(model_path)
        config_file = save_config(config, folder / "config.yaml")
        history_file = result.history.to_csv(folder / "history.csv")
        curves = plot_learning_curves(
            result.history, folder / "learning_curves.png", title=config_path.stem
        )
        log_files(client, run_id, [config_file, history_file, curves, model_path])
        client.set_tag(run_id, "stop_reason", result.stop_reason)
        if result.best_epoch is not None:
            client.log_metric(run_id, "best_val_accuracy", float(result.best_val_accuracy or 0.0))
            client.set_tag(run_id, "best_epoch", str(result.best_epoch))
    except BaseException as error:
        client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:5000])
        client.set_terminated(
            run_id, status="KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        )
        raise
    client.set_terminated(run_id, status="FINISHED")
    best = (
        "none"
        if result.best_epoch is None
        else f"{result.best_val_accuracy:.4f} at epoch {result.best_epoch}"
    )
    print(f"best val_accuracy {best}; stopped: {result.stop_reason}")
    print(f"wrote {model_path}, {config_file}, {history_file}, {curves}")
    return 0 if result.stop_reason == "completed" else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        budget = args.cache_budget_gb
        if budget is not None and budget < 0:
            raise TrainerInputError(f"--cache-budget-gb must be 0 or more, got {budget}")
        return train(
            Path(args.config),
            args.output,
            args.tracking_uri,
            args.experiment,
            args.cache_dir,
            None if budget is None else round(budget * GIGABYTE),
        )
    except TrainerInputError as error:
        # Errors a user can fix are one line; anything else is a bug and keeps its traceback.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
