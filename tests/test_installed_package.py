"""The installed package, not the checkout: after `pip install .`, `python -m search.run --study
demo` works from any folder, and its best trial exports and trains as in the README.

A wheel is built from a copy of the source tree (so no build/ or egg-info lands in the
checkout) and installed, without its dependencies, into a fresh virtual environment. The
dependencies come from the running environment through a `.pth` line naming its site-packages:
nothing is downloaded or copied. A path added by a `.pth` line is not scanned for `.pth` files
itself, so the running environment's editable install of this project (a finder loaded by its
own `.pth` file) stays out, and `spaces`, `search` and `trainers` are the wheel's.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from search.study.portfolio import load_portfolio
from search.vocabulary import TrialAttr
from tests.conftest import PRETRAINED_WEIGHTS, REPO
from trainers.config.schema import TrainConfig, load_config

pytestmark = pytest.mark.slow

#: Generous: a wheel build, a pip install, or a whole one-trial study on two busy cores.
TIMEOUT = 300
WEIGHTS_IN_WHEEL = "spaces/weights/mobilenetv3small_synthetic_source_64.weights.h5"
CARD_IN_WHEEL = "spaces/weights/mobilenetv3small_synthetic_source_64.yaml"
#: Variables that would let the checkout, another environment or another tracking server in.
_HOST_VARIABLES = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "VIRTUAL_ENV",
    "MLFLOW_TRACKING_URI",
)


@dataclass(frozen=True)
class Installation:
    """The wheel, and the fresh environment it is installed in."""

    wheel: Path
    python: Path
    site_packages: Path
    #: Scratch space removed with the environment; each test makes its own folder in it.
    scratch: Path


def _environment() -> dict[str, str]:
    """This process's environment without the checkout on any path, CPU only, TF quiet."""
    env = {key: value for key, value in os.environ.items() if key not in _HOST_VARIABLES}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return env


def _run(command: Sequence[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `command` in its own process group (with any workers it spawns), output captured;
    the whole group is killed if it outlives TIMEOUT or the test is interrupted."""
    process = subprocess.Popen(
        [str(part) for part in command],
        cwd=cwd,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"timed out after {TIMEOUT} s: {command}\n{output}")
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # The coordinator's workers are gone with it; end anything left in the group all the same.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(process.args, process.returncode, output)


def _checked(command: Sequence[str | Path], cwd: Path) -> str:
    done = _run(command, cwd)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}"
    return done.stdout


def _version(distribution: str) -> tuple[int, ...]:
    """The leading numeric components of an installed distribution's version; () if absent."""
    try:
        text = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ()
    parts: list[int] = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def _can_build_offline() -> bool:
    """setuptools is here, and so is `wheel` where setuptools predates its own bdist_wheel."""
    setuptools = _version("setuptools")
    if not setuptools:
        return False
    return setuptools >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _copy_source_tree(destination: Path) -> None:
    """The files a commit of the working tree would hold: tracked ones and new, not ignored
    ones (build outputs, caches and stores are ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _build_wheel(source: Path, dist: Path) -> Path:
    command: list[str | Path] = [sys.executable, "-m", "pip", "wheel", "--no-deps"]
    command += ["--no-cache-dir", "--disable-pip-version-check", "-w", dist]
    if _can_build_offline():
        command += ["--no-build-isolation", "--no-index"]
    # Otherwise pip fetches the build backend (pyproject's build-system) from the index.
    _checked([*command, source], cwd=dist.parent)
    wheels = list(dist.glob("finetune_search-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _running_site_packages() -> list[str]:
    """Where this environment's dependencies are installed (this test runs in it)."""
    paths = sysconfig.get_paths()
    candidates = [*site.getsitepackages(), paths["purelib"], paths["platlib"]]
    return [path for path in dict.fromkeys(candidates) if Path(path).is_dir()]


def _fresh_environment(folder: Path, wheel: Path) -> tuple[Path, Path]:
    """A new virtual environment holding only the wheel, then the dependencies by reference."""
    # pip >= 22.3 installs into another interpreter (--python), so the new one needs no pip.
    pip_targets_others = _version("pip") >= (22, 3)
    venv = [sys.executable, "-m", "venv", *(["--without-pip"] if pip_targets_others else [])]
    _checked([*venv, folder], cwd=folder.parent)
    python = folder / "bin" / "python"
    site_packages = Path(
        _checked(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=folder,
        ).strip()
    )
    install: list[str | Path] = ["install", "--no-deps", "--no-index", "--no-cache-dir", wheel]
    pip: list[str | Path] = (
        [sys.executable, "-m", "pip", "--python", python]
        if pip_targets_others
        else [python, "-m", "pip"]
    )
    # Before the .pth line: pip must not see the running environment's editable install.
    _checked([*pip, "--disable-pip-version-check", *install], cwd=folder)
    (site_packages / "running_environment.pth").write_text(
        "".join(f"{path}\n" for path in _running_site_packages())
    )
    return python, site_packages


@pytest.fixture(scope="module")
def installation() -> Iterator[Installation]:
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout to know the source tree's files")
    with tempfile.TemporaryDirectory(prefix="finetune-search-wheel-") as name:
        scratch = Path(name).resolve()
        source, dist = scratch / "source", scratch / "dist"
        dist.mkdir()
        _copy_source_tree(source)
        wheel = _build_wheel(source, dist)
        python, site_packages = _fresh_environment(scratch / "venv", wheel)
        yield Installation(wheel, python, site_packages, scratch)


def _empty_folder(installation: Installation, name: str) -> Path:
    folder = installation.scratch / name
    folder.mkdir()
    return folder


def test_the_wheel_ships_the_demo_weights_and_their_card(installation: Installation) -> None:
    with zipfile.ZipFile(installation.wheel) as wheel:
        names = set(wheel.namelist())
        assert {WEIGHTS_IN_WHEEL, CARD_IN_WHEEL} <= names
        # The committed file itself (not, say, a Git LFS pointer).
        assert wheel.read(WEIGHTS_IN_WHEEL) == PRETRAINED_WEIGHTS.read_bytes()


def test_the_fresh_environment_imports_the_wheel_not_the_checkout(
    installation: Installation,
) -> None:
    probe = (
        "import json, sys, search, spaces, trainers, spaces.demo\n"
        "print(json.dumps({\n"
        "    'modules': [m.__file__ for m in (search, spaces, trainers, spaces.demo)],\n"
        "    'weights': spaces.demo.PRETRAINED_WEIGHTS,\n"
        "    'finders': [type(f).__module__ for f in sys.meta_path],\n"
        "    'path': sys.path,\n"
        "}))\n"
    )
    folder = _empty_folder(installation, "probe")
    found = json.loads(_checked([installation.python, "-c", probe], cwd=folder).splitlines()[-1])

    for module_file in found["modules"]:
        assert Path(module_file).is_relative_to(installation.site_packages), module_file
    weights = Path(found["weights"])
    assert weights == installation.site_packages / WEIGHTS_IN_WHEEL
    assert weights.is_file()
    assert not any(module.startswith("__editable__") for module in found["finders"])
    assert str(REPO) not in found["path"]


def test_the_demo_runs_from_an_empty_folder_exports_and_the_export_trains(
    installation: Installation,
) -> None:
    """The user's path through the demo, with the installed commands: its first trial (the
    full demo runs 8), exported, the export trained."""
    folder = _empty_folder(installation, "demo")
    python = installation.python
    command: list[str | Path] = [python, "-m", "search.run", "--study", "demo"]
    command += ["--n-trials", "1"]
    done = _run(command, cwd=folder)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    ended = [line for line in lines if line.startswith("trial ") and "best" in line]
    assert len(ended) == 1, done.stdout
    assert "python -m search.export --study demo -o best.yaml" in done.stdout

    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{folder / 'optuna.db'}")
    finished = [trial for trial in study.get_trials() if trial.state.is_finished()]
    # The first is the portfolio's first recipe, read from the file the wheel ships.
    shipped = load_portfolio(installation.site_packages / "search" / "study" / "portfolio.yaml")
    labels = [trial.user_attrs[TrialAttr.ENQUEUED] for trial in finished]
    assert labels == [f"portfolio:{shipped[0].name}"]
    finished = [trial for trial in finished if trial.state == TrialState.COMPLETE]
    assert finished, done.stdout
    config = TrainConfig.from_yaml(finished[0].user_attrs[TrialAttr.CONFIG_YAML])
    assert config.model.weights == str(installation.site_packages / WEIGHTS_IN_WHEEL)
    # Everything the study writes lands in the folder it was run from.
    assert {"optuna.db", "mlflow.db", "runs"} <= {path.name for path in folder.iterdir()}

    _checked([python, "-m", "search.export", "--study", "demo", "-o", "best.yaml"], folder)
    exported = load_config(folder / "best.yaml")
    assert exported.provenance is not None and exported.provenance.study == "demo"

    train = [python, "-m", "trainers.train", "--config", "best.yaml", "--output", "prod"]
    _checked(train, folder)
    assert load_config(folder / "prod" / "config.yaml") == exported
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (production,) = client.search_runs([client.get_experiment_by_name("production").experiment_id])
    # The production run links back to the trial it came from.
    assert production.data.tags["provenance.study"] == "demo"
    assert production.data.tags["provenance.trial_number"] == str(exported.provenance.trial_number)
