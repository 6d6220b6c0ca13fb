"""`python -m search.run` with scripted workers, for tests that need whole coordinator processes.

    PYTHONPATH=. python -m tests.search.scripted_run --study smoke --workers 2 ...

Everything is the real command (parsing, checks, coordinator, storage, MLflow, signals, exit
codes) except that each trial's spawned process plays a healthy script instead of training, so
kills, resumes and several coordinators can be tested in seconds. Each epoch takes
$SCRIPTED_SECONDS_PER_EPOCH seconds (default 0.3), so trials overlap as real ones do. With
$SCRIPTED_GATE (a file) and $SCRIPTED_GATE_FROM (a trial number), the trials from that number
on wait for the file before their first epoch: a test holds a study's last trials until it has
done what must happen while the study still runs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

from search.run import main
from tests.search.scripted_worker import Script, ScriptedWorker

#: How many trial numbers from $SCRIPTED_GATE_FROM on are held: more than any test's re-runs.
GATED_TRIALS = 1000

if __name__ == "__main__":
    seconds = float(os.environ.get("SCRIPTED_SECONDS_PER_EPOCH", "0.3"))
    healthy = Script(accuracies=(0.5, 0.6, 0.7), seconds_per_epoch=seconds)
    scripts: dict[int, Script] = {}
    if "SCRIPTED_GATE" in os.environ:
        gated = replace(healthy, wait_for_file=os.environ["SCRIPTED_GATE"])
        first = int(os.environ["SCRIPTED_GATE_FROM"])
        scripts = dict.fromkeys(range(first, first + GATED_TRIALS), gated)
    sys.exit(main(worker=ScriptedWorker(scripts, default=healthy)))
