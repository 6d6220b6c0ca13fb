"""Run or resume a study: `python -m search.run --study NAME`.

    python -m search.run --study demo
    python -m search.run --study effnet_b4 --data data/stanford_dogs/train --n-trials 40
    python -m search.run --study studies/stanford_dogs_b0.yaml --image-size 192

The trial count is the study's target total: running the same command again continues the
study until that many trials have finished, so an interrupted study is completed, not
restarted. `--budget-epochs` and `--budget-hours` bound it by compute instead (or as well),
shared the same way (`search.study.budget`). One line is printed per finished trial (number, state,
value or reason, best so far, elapsed time, compute spent), plus one per epoch. Bad input is
one `error:` line and exit status 2, before any trial starts.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import optuna

from search.engines.base import ENGINES, EngineChoice
from search.engines.oracle import ORACLES
from search.pruning.decision import PRUNERS
from search.runner.active_trial import WorkerEntry
from search.runner.coordinator import run_study
from search.runner.slots import SlotError, detect_gpus, parse_gpus, worker_environments
from search.runner.worker import run_worker
from search.storage.retry import StorageLostError
from search.storage.urls import DEFAULT_STORAGE, StorageError, check_storage_url, redact
from search.study.files import resolve_study
from search.study.overrides import with_overrides
from search.study.portfolio import portfolio_path, with_portfolio
from search.study.registry import STUDIES, StudySpec, UnknownStudyError
from search.study.setup import RunSettings, StudyMismatchError
from search.trial.retry import RetryPolicy, StudyStoppedError
from trainers.caching.store import GIGABYTE
from trainers.data.image_folder import scan_data_folders
from trainers.errors import ModelBuildError, TrainerInputError
from trainers.installation import add_version_option, require_tensorflow
from trainers.model.backbones import check_weights
from trainers.outputs import ensure_writable_folder
from trainers.redaction import hide_passwords
from trainers.tracking import check_tracking_uri, resolve_tracking_uri


class UsageError(Exception):
    """Bad command-line input; reported as one line."""


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m search.run",
        description="Run (or resume) an Optuna study of fine-tuning strategies.",
    )
    add_version_option(parser)
    parser.add_argument(
        "--study",
        required=True,
        help=f"a registered study ({', '.join(sorted(STUDIES))}) or a study file (.yaml); "
        "python -m search.studies lists them",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="optuna",
        help="what chooses the trials: Optuna's sampler and pruner, or a KerasTuner oracle "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--oracle",
        choices=ORACLES,
        help="the KerasTuner oracle of --engine keras-tuner (default: hyperband)",
    )
    parser.add_argument(
        "--pruner",
        choices=tuple(PRUNERS),
        help="the Optuna pruner asked after the collapse rules (default: the study's)",
    )
    parser.add_argument(
        "--n-trials",
        type=int,
        help="target total of finished trials (default: the study's; none with a --budget-*)",
    )
    parser.add_argument(
        "--budget-epochs",
        type=int,
        help="start no trial once the study's trials (all coordinators, all runs) have trained "
        "this many epochs, counting what running trials may still train",
    )
    parser.add_argument(
        "--budget-hours",
        type=float,
        help="start no trial once the study's trials have run this many hours in total "
        "(worker hours, summed over all coordinators and runs)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds after which no new trial starts (running ones finish)",
    )
    parser.add_argument(
        "--storage", default=DEFAULT_STORAGE, help="Optuna storage URL (default: %(default)s)"
    )
    parser.add_argument(
        "--data", help="data source (default: the study's), e.g. a folder or tfds:NAME"
    )
    model = parser.add_argument_group(
        "model (recorded on the study: a resume must pass the same)",
    )
    model.add_argument(
        "--backbone",
        help="another registered backbone; its own unfreeze ladder, native image size and "
        "ImageNet weights unless --image-size / --weights say otherwise",
    )
    model.add_argument("--image-size", type=int, help="square input size in pixels")
    model.add_argument(
        "--weights", help="imagenet, or a .weights.h5 file of the same headless backbone"
    )
    parser.add_argument(
        "--portfolio",
        metavar="shipped|none|FILE",
        help="the recipes tried first, before the study's own (default: the study file's, else "
        "shipped; docs/studies.md); the Optuna engine only",
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    parser.add_argument(
        "--output", help="folder for trial logs and artifacts (default: runs/search/<study>)"
    )
    parser.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        help="decode images and compute frozen features in every trial instead of once per "
        "study in OUTPUT/cache",
    )
    parser.add_argument(
        "--cache-budget-gb",
        type=float,
        help="the largest cache entry of activations below unfrozen blocks, in GB "
        "(default: a quarter of the worker machine's memory)",
    )
    parallel = parser.add_argument_group("parallel and fault tolerance")
    parallel.add_argument(
        "--workers",
        type=int,
        help="trials at once (default: one per GPU in --gpus, else 1); without GPUs, CPU workers",
    )
    parallel.add_argument(
        "--gpus",
        help="GPU indices as nvidia-smi numbers them, one worker pinned to each, e.g. 0,1 "
        "(default: those in $CUDA_VISIBLE_DEVICES if set, else all that nvidia-smi lists)",
    )
    parallel.add_argument(
        "--no-prewarm",
        dest="prewarm",
        action="store_false",
        help="start each trial's process when the trial starts, not while the previous one trains",
    )
    parallel.add_argument(
        "--retries",
        type=int,
        default=RetryPolicy.retries,
        help="re-runs of a trial after an infrastructure failure (default: %(default)s)",
    )
    parallel.add_argument(
        "--max-consecutive-failures",
        type=int,
        default=RetryPolicy.max_consecutive_failures,
        help="stop the study after this many failed trials in a row (default: %(default)s)",
    )
    parallel.add_argument(
        "--storage-retry-s",
        type=float,
        default=RunSettings.storage_retry_s,
        help="seconds to retry a database that stopped answering before the study stops, "
        "resumable (default: %(default)s)",
    )
    parallel.add_argument(
        "--heartbeat-interval",
        type=int,
        default=RunSettings.heartbeat_interval,
        help="seconds between trial heartbeats (default: %(default)s)",
    )
    parallel.add_argument(
        "--grace-period",
        type=int,
        default=RunSettings.grace_period,
        help="seconds without heartbeat before a trial is re-run (default: %(default)s)",
    )
    return parser.parse_args(argv)


def preflight(spec: StudySpec, data_source: str) -> None:
    """Reject, before any trial starts, what would make every trial fail: a data source the
    space's configs reject, a bad data folder, a weights file that is not there."""
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))  # in memory
    if spec.enqueued:
        probe.enqueue_trial(dict(spec.enqueued[0].params))
    config = spec.space(probe.ask(), data_source)
    try:
        check_weights(config.model.weights)
    except ModelBuildError as error:
        raise ModelBuildError(
            f"the {spec.name} study's {error}; pass --weights imagenet or a .weights.h5 file"
        ) from None
    scan_data_folders(config.data)


def settings_from(args: argparse.Namespace) -> tuple[StudySpec, RunSettings]:
    """The study (with the command's overrides) and how to run it."""
    # Every trial's worker would fail on it; the coordinator only looks, never imports it.
    require_tensorflow()
    loaded = resolve_study(args.study)
    spec = with_overrides(
        loaded.spec, backbone=args.backbone, image_size=args.image_size, weights=args.weights
    )
    engine = _engine_choice(args)
    if args.pruner is not None:
        spec = replace(spec, pruner=args.pruner)
    if engine.name == "optuna":  # a KerasTuner oracle proposes its own first trials
        chosen = loaded.portfolio if args.portfolio is None else portfolio_path(args.portfolio)
        spec, placements = with_portfolio(spec, chosen)
        for placement in placements:
            if placement.params is None:
                print(f"portfolio recipe {placement.describe()}")
    # The command line wins over a study file's budgets.
    budget_epochs = args.budget_epochs if args.budget_epochs is not None else loaded.budget_epochs
    budget_hours = args.budget_hours if args.budget_hours is not None else loaded.budget_hours
    compute_budget = budget_epochs is not None or budget_hours is not None
    # A compute budget alone bounds the study; the study's default trial count would cut it
    # short. So does KerasTuner's Hyperband, whose brackets end it.
    ends_itself = engine.name == "keras-tuner" and engine.oracle == "hyperband"
    explicit = args.n_trials is not None or compute_budget or ends_itself
    n_trials = args.n_trials if explicit else spec.n_trials
    if n_trials is not None and n_trials < 1:
        raise UsageError(f"--n-trials must be at least 1, got {n_trials}")
    if budget_epochs is not None and budget_epochs < 1:
        raise UsageError(f"--budget-epochs must be at least 1, got {budget_epochs}")
    if budget_hours is not None and not budget_hours > 0:
        raise UsageError(f"--budget-hours must be positive, got {budget_hours}")
    if args.cache_budget_gb is not None and args.cache_budget_gb < 0:
        raise UsageError(f"--cache-budget-gb must be 0 or more, got {args.cache_budget_gb}")
    if args.storage_retry_s < 0:
        raise UsageError(f"--storage-retry-s must be 0 or more, got {args.storage_retry_s}")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout}")
    check_storage_url(args.storage)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(tracking_uri)
    data_source = args.data or spec.default_data
    preflight(spec, data_source)
    gpus, nvidia_smi_numbering = (parse_gpus(args.gpus), True) if args.gpus else detect_gpus()
    environments = worker_environments(
        args.workers, gpus, nvidia_smi_numbering=nvidia_smi_numbering
    )
    if args.heartbeat_interval < 1 or args.grace_period <= args.heartbeat_interval:
        raise UsageError(
            "--grace-period must exceed --heartbeat-interval (>= 1 s), got "
            f"{args.grace_period} and {args.heartbeat_interval}"
        )
    try:
        retry = RetryPolicy(args.retries, args.max_consecutive_failures)
    except ValueError as error:
        raise UsageError(str(error)) from None
    output = ensure_writable_folder(Path(args.output or Path("runs") / "search" / spec.name))
    return spec, RunSettings(
        n_trials=n_trials,
        storage=args.storage,
        data_source=data_source,
        tracking_uri=tracking_uri,
        output_dir=output,
        timeout=args.timeout,
        workers=len(environments),
        worker_environments=environments,
        retry=retry,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        budget_epochs=budget_epochs,
        budget_hours=budget_hours,
        cache=args.cache,
        cache_budget_bytes=None
        if args.cache_budget_gb is None
        else round(args.cache_budget_gb * GIGABYTE),
        prewarm=args.prewarm,
        storage_retry_s=args.storage_retry_s,
        engine=engine,
    )


def _engine_choice(args: argparse.Namespace) -> EngineChoice:
    if args.engine == "optuna":
        if args.oracle is not None:
            raise UsageError("--oracle chooses a KerasTuner oracle: pass --engine keras-tuner too")
        return EngineChoice()
    if args.pruner is not None:
        raise UsageError(
            "--pruner is Optuna's: KerasTuner's oracles have none (the collapse rules still "
            "apply, and Hyperband gives each trial its epochs)"
        )
    return EngineChoice(args.engine, args.oracle or "hyperband")


def _resume_command(argv: Sequence[str]) -> str:
    """The command line to paste, quoted for the shell, with any database password hidden."""
    shown = [_hide_password(argument) for argument in argv]
    return shlex.join(["python", "-m", "search.run", *shown])


def _hide_password(argument: str) -> str:
    if "://" not in argument:
        return argument
    option, equals, value = argument.partition("=")
    if equals and option.startswith("--") and "://" not in option:
        return f"{option}={redact(value)}"  # --storage=postgresql://...
    return redact(argument)


def main(argv: Sequence[str] | None = None, *, worker: WorkerEntry = run_worker) -> int:
    """The command line; `worker` is what each trial's process runs (tests script it)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parse(arguments)
    # The runner prints its own lines; Optuna's INFO log would repeat them.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        spec, settings = settings_from(args)
    except (UnknownStudyError, StorageError, TrainerInputError, UsageError, SlotError) as error:
        print(f"error: {hide_passwords(str(error))}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        summary = run_study(spec, settings, worker=worker)
    except StudyMismatchError as error:
        print(f"error: {hide_passwords(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = _resume_command(arguments)
        print(
            f"\ninterrupted; the stores are consistent. Resume with:\n  {resume}", file=sys.stderr
        )
        return 130
    except StudyStoppedError as error:
        print(f"error: {error}\n  {_resume_command(arguments)}", file=sys.stderr)
        return 3
    except StorageLostError as error:
        print(
            f"error: {error}; the running trials are re-run on resume. Once the database "
            f"answers, resume with:\n  {_resume_command(arguments)}",
            file=sys.stderr,
        )
        return 3
    except Exception:
        # A bug or a lost server: the traceback matters, and so does how to carry on.
        print(
            f"the study stopped on an error; resume with: {_resume_command(arguments)}",
            file=sys.stderr,
        )
        raise
    if summary.best_trial is not None:
        print(
            "export the best config with: python -m search.export --study "
            f"{shlex.quote(args.study)} -o best.yaml"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
