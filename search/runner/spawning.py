"""Starting a study's child processes (trial workers, standbys, the KerasTuner oracle) lean.

Under the spawn start method every child first re-imports its parent's `__main__` module, before
it unpickles its target. Under `python -m search.run` that module is the whole command line
front: Optuna, SQLAlchemy, the MLflow client, the study registry, about 0.7 s of CPU on a
2-core machine, paid again by every trial's worker, which never uses it (each target names its
own module: `search.runner.worker`, `search.runner.prewarm`, `search.engines.oracle`). A
parent's main module is hidden from `multiprocessing` while it starts such a child, so the
child imports only what its target needs. A target defined in `__main__` itself would not be
found by such a child: none of the study's are.
"""

from __future__ import annotations

import sys
import threading
from multiprocessing.process import BaseProcess

#: `process.start()` reads the main module's `__spec__` and `__file__`; two threads starting
#: children at once must not restore each other's half.
_HIDING = threading.Lock()


def start_without_main(process: BaseProcess) -> None:
    """`process.start()`, its spawned interpreter not re-importing this one's `__main__`."""
    main = sys.modules["__main__"]
    with _HIDING:
        spec = getattr(main, "__spec__", None)
        has_file = hasattr(main, "__file__")
        path = getattr(main, "__file__", None)
        # multiprocessing.spawn.get_preparation_data re-imports the main module by the name in
        # its spec, or else by its file; with neither, the child leaves it out.
        main.__spec__ = None
        if has_file:
            del main.__file__
        try:
            process.start()
        finally:
            main.__spec__ = spec
            if has_file:
                main.__file__ = path
