"""`python -m search.run` with scripted workers, for tests that need whole coordinator processes.

    PYTHONPATH=. python -m tests.search.scripted_run --study smoke --workers 2 ...

Everything is the real command (parsing, checks, coordinator, storage, MLflow, signals, exit
codes) except that each trial's spawned process plays a healthy script instead of training, so
kills, resumes and several coordinators can be tested in seconds. Each epoch takes
$SCRIPTED_SECONDS_PER_EPOCH seconds (default 0.3), so trials overlap as real ones do.
"""

from __future__ import annotations

import os
import sys

from search.run import main
from tests.search.scripted_worker import Script, ScriptedWorker

if __name__ == "__main__":
    seconds = float(os.environ.get("SCRIPTED_SECONDS_PER_EPOCH", "0.3"))
    healthy = Script(accuracies=(0.5, 0.6, 0.7), seconds_per_epoch=seconds)
    sys.exit(main(worker=ScriptedWorker(default=healthy)))
