"""Replay MLflow writes a study kept while its tracking server was away: `python -m search.sync`.

    python -m search.sync --output runs/search/effnet_b4
    python -m search.sync --output runs/search/effnet_b4 --tracking-uri http://mlflow:5000

A coordinator that could not reach the MLflow server keeps its writes in
`OUTPUT/mlflow-spool-<host>-<pid>.jsonl` (`search.tracking.spool`) and replays them itself when
the server answers again; what is left when the study ends is replayed by this command, with
the original steps and timestamps. A spool emptied is removed, so running it twice writes
nothing twice; a spool the server still cannot take stays for the next try. A store that lacks
the study's experiment or runs (another --tracking-uri than the study's) is one `error:` line,
exit status 2, before anything is written; the spools stay.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from search.storage.urls import redact
from search.tracking.spool import (
    SPOOL_PREFIX,
    missing_from_store,
    read_spool,
    replay_spool,
    server_unreachable,
)
from trainers.installation import add_version_option
from trainers.redaction import hide_passwords
from trainers.tracking import (
    TrackingError,
    check_tracking_uri,
    make_client,
    resolve_tracking_uri,
    sqlite_file,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m search.sync",
        description="Write a study's spooled MLflow writes to its tracking server.",
    )
    add_version_option(parser)
    parser.add_argument(
        "--output", required=True, help="the study's output folder (search.run --output)"
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    args = parser.parse_args(argv)
    folder = Path(args.output)
    spools = sorted(folder.glob(f"{SPOOL_PREFIX}*.jsonl"))
    if not folder.is_dir():
        print(f"error: {folder} is not a folder", file=sys.stderr)
        return 2
    if not spools:
        print(f"nothing to replay: no {SPOOL_PREFIX}*.jsonl in {folder}")
        return 0
    uri = resolve_tracking_uri(args.tracking_uri)
    try:
        check_tracking_uri(uri)
    except TrackingError as error:
        print(f"error: {hide_passwords(str(error))}", file=sys.stderr)
        return 2
    database = sqlite_file(uri)
    if database is not None and not database.is_file():
        # Opening it would create an empty store, which lacks every run anyway.
        print(
            f"error: no MLflow store at {redact(uri)} ({database} does not exist); pass the "
            "study's --tracking-uri (the spools are kept)",
            file=sys.stderr,
        )
        return 2
    client = make_client(uri)
    for spool in spools:
        try:
            missing = missing_from_store(client, read_spool(spool))
        except Exception as error:
            if not server_unreachable(error):
                raise
            missing = None  # the replay below finds it away too, and keeps the spool
        if missing is not None:
            print(
                f"error: the MLflow store at {redact(uri)} has no {missing}, which {spool} "
                "writes to; pass the study's --tracking-uri (the spools are kept)",
                file=sys.stderr,
            )
            return 2
    left_total = 0
    for spool in spools:
        try:
            written, left = replay_spool(client, spool)
        except Exception as error:
            if not server_unreachable(error):
                raise
            written, left = 0, -1
        left_total += max(left, 0)
        state = "done, removed" if left == 0 else f"{left} left, kept" if left > 0 else "kept"
        print(f"{spool.name}: wrote {written} writes to {redact(uri)} ({state})")
    return 0 if left_total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
