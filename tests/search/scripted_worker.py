"""A scripted stand-in for the trial worker: reports given epochs through the real protocol.

The coordinator spawns it exactly as it spawns `search.runner.worker.run_worker` (a fresh process,
the same pipe, the same messages), but instead of training a Keras model it plays a script: these
validation accuracies, then finish; or NaN at epoch 2; or die at epoch 1; or fail with a given
reason; where a Hyperband round asks for the best epoch's weights, it leaves a file standing for
them. It imports no TensorFlow, so a coordinator test runs in seconds, not minutes. A `gpu_oom` in
FINETUNE_SEARCH_FAULTS (`search.runner.faults`) strikes it as it strikes the real worker.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path

from search.runner.faults import faults_for
from search.runner.protocol import Epoch, Failed, Finished, Started, Stop, WorkerRequest
from search.vocabulary import Reason
from trainers.config.schema import TrainConfig


@dataclass(frozen=True)
class Script:
    """What one trial's worker does."""

    #: Validation accuracy of each epoch, in order, up to the config's epochs; NaN makes that
    #: epoch's loss NaN too.
    accuracies: tuple[float, ...] = (0.5, 0.7, 0.8)
    #: Phase of each epoch (default: all phase 1).
    phases: tuple[int, ...] = ()
    #: Training loss of each epoch (default: slowly falling).
    losses: tuple[float, ...] = ()
    num_classes: int = 4
    #: Validation images the worker says it holds: the collapse rules' noise depends on it.
    validation_images: int = 400
    #: After reporting this epoch, SIGKILL itself (the OOM killer, a lost node).
    die_after: int | None = None
    #: After reporting `fail_after` epochs, fail the way the real worker reports an exception.
    fail: Reason | None = None
    fail_after: int = 0
    #: Seconds each epoch "trains", so a test can act while the trial runs.
    seconds_per_epoch: float = 0.0
    #: A file whose existence the first epoch waits for (up to 5 minutes, or until the
    #: coordinator is gone): the test's signal that whatever the trial must run after has
    #: happened.
    wait_for_file: str | None = None

    def metrics(self, index: int) -> dict[str, float]:
        accuracy = self.accuracies[index]
        loss = self.losses[index] if self.losses else 1.0 - 0.05 * index
        return {
            "phase": float(self.phases[index] if self.phases else 1),
            "loss": math.nan if math.isnan(accuracy) else loss,
            "accuracy": accuracy,
            "val_loss": math.nan if math.isnan(accuracy) else loss,
            "val_accuracy": accuracy,
        }


def _leave_weights(request: WorkerRequest) -> None:
    """A file where the real worker saves its best epoch's weights when asked, so that a later
    Hyperband round continues this trial as it would a trained one."""
    if request.save_weights is not None:
        Path(request.save_weights).parent.mkdir(parents=True, exist_ok=True)
        Path(request.save_weights).write_bytes(b"scripted weights")


@dataclass(frozen=True)
class ScriptedWorker:
    """Plays `scripts[trial number]` (or `default`) in the spawned worker process."""

    scripts: Mapping[int, Script] = field(default_factory=dict)
    default: Script = Script()

    def __call__(self, connection: Connection, request: WorkerRequest, parent_pid: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as the real worker: the coordinator decides
        script = self.scripts.get(request.trial_number, self.default)
        config = TrainConfig.from_yaml(request.config_yaml)
        for fault in faults_for(request.trial_number, config.batch_size):
            if fault.kind == Reason.GPU_OOM:  # as the real worker's injected OOM
                script = replace(script, fail=Reason.GPU_OOM, fail_after=fault.epoch)
        window = request.window
        with open(request.log_path, "a", encoding="utf-8") as log:  # as the real worker's log
            log.write(f"trial {request.trial_number}: scripted worker pid {os.getpid()}\n")
            if window.initial_weights is not None:
                log.write(f"initial weights: {window.initial_weights}\n")
        try:
            connection.send(
                Started(script.num_classes, 32, script.validation_images, request.config_yaml)
            )
            epochs = config.total_epochs
            if script.wait_for_file is not None:
                deadline = time.monotonic() + 300
                while not os.path.exists(script.wait_for_file) and time.monotonic() < deadline:
                    if os.getppid() != parent_pid:
                        return  # the coordinator was killed: no one to train for
                    time.sleep(0.1)
            # The request's window of global epochs (a Hyperband round), played from the script.
            last = min(epochs, window.until_epoch or epochs, len(script.accuracies))
            for index in range(window.after_epoch, last):
                if script.fail is not None and index == script.fail_after:
                    connection.send(Failed(script.fail, f"scripted {script.fail}"))
                    return
                time.sleep(script.seconds_per_epoch)
                connection.send(Epoch(index + 1, script.metrics(index)))
                reply = connection.recv()
                if script.die_after == index + 1:
                    os.kill(os.getpid(), signal.SIGKILL)
                if isinstance(reply, Stop):
                    with open(request.log_path, "a", encoding="utf-8") as log:
                        log.write(f"stopped by the coordinator after epoch {index + 1}: ")
                        log.write(f"{reply.reason}\n")
                    _leave_weights(request)
                    connection.send(Finished("requested", reply.reason))
                    return
            if script.fail is not None:
                connection.send(Failed(script.fail, f"scripted {script.fail}"))
                return
            _leave_weights(request)
            connection.send(Finished("completed", None))
        except (EOFError, OSError):
            pass  # the coordinator is gone
        finally:
            connection.close()
