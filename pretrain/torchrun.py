"""torchrun that passes the workers' exit status on: ``python -m pretrain.torchrun [torchrun options] -m pretrain.train …``.

torchrun ends every failed run the same way: exit status 1 and its own report (a Python traceback and
a table per rank), so neither a person nor a job script can tell a typo in the config from a
preemption or a crash. This wrapper runs torchrun's own launcher with the same options and exits
with the status of the worker that failed first:

    0     finished
    2     user error: bad config, data or checkpoint; the worker printed one line saying what to change
    75    preempted: a checkpoint was saved; relaunch the same command to resume
    128+N a worker was killed by signal N (e.g. 137: SIGKILL, often the out-of-memory killer)
    other the worker's own status after an unexpected error (its traceback is above)

The workers' output is unchanged; torchrun's failure report becomes one line (none for 2 and 75,
whose worker already said what happened). torchrun's own log is quiet below errors of the launcher
itself; ``LOGLEVEL=WARNING`` brings it back.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from pretrain import exit_codes


def exit_status(code: int) -> int:
    """A worker's exit code as a shell reports it (a signal N as 128+N)."""
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    level = os.environ.setdefault("LOGLEVEL", "CRITICAL")  # read when torchrun's loggers are made, at import
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(level)  # its plain module loggers inherit this

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        status = exit_status(failure.exitcode)
        if failure.exitcode < 0:
            name = signal.Signals(-failure.exitcode).name if -failure.exitcode in signal.valid_signals() else "a signal"
            print(f"torchrun: rank {rank} was killed by {name} (exit status {status})", file=sys.stderr)
        elif status not in (exit_codes.USER_ERROR, exit_codes.REQUEUE):
            print(f"torchrun: rank {rank} failed with exit status {status} (its error is above)", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
