"""torchrun that passes the workers' exit status on:

    python -m pretrain.torchrun [torchrun options] -m pretrain.train …

torchrun ends every failed run the same way: exit status 1 and its own report (a Python traceback and
a table per rank), so neither a person nor a job script can tell a typo in the config from a
preemption or a crash. This wrapper runs torchrun's own launcher with the same options and exits
with the status of the worker that failed first:

    0     finished
    2     user error: bad config, data or checkpoint; the worker printed one line saying what to change
    3     a rank stopped because another rank died (never reported: the rank that died is)
    75    preempted: a checkpoint was saved; relaunch the same command to resume
    76    a rank made no progress for parallel.collective_timeout_s (a hang); relaunch to resume from the
          last checkpoint (the worker's line names the rank(s) and where their stacks are)
    128+N a worker was killed by signal N (e.g. 137: SIGKILL, often the out-of-memory killer)
    other the worker's own status after an unexpected error (its traceback is above)

The workers' output is unchanged; torchrun's failure report becomes one line (none for 2, 75 and 76,
whose worker already said what happened).

SIGTERM and SIGINT reaching the launcher (a scheduler's stop, Ctrl-C) are passed on to the workers,
which save at their next step boundary and exit 75; the launcher keeps waiting for them instead of
raising torchrun's ``SignalException`` and killing them 30 s later. SIGHUP and SIGQUIT keep torchrun's
own handling. torchrun's own log is quiet below errors of the launcher
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


def children_by_parent() -> dict[int, list[int]]:
    """Every process's direct children, by parent id, from /proc (Linux); {} where there is no /proc."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # field 4, after "pid (comm) state"
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def _blame(code: int) -> int:
    """Which failed worker to report (lowest first): its own exit status, then a death by a signal other
    than SIGTERM, then SIGTERM (which torchrun itself sends the others once one has failed, and which a
    rank only dies of outside its own handler), then a rank that only lost a peer (exit 3)."""
    if code == exit_codes.PEER_LOST:
        return 3
    if code == -signal.SIGTERM:
        return 2
    return 1 if code < 0 else 0


def _forward(signum, frame) -> None:
    for pid in children_by_parent().get(os.getpid(), []):  # the workers torchrun started
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def main(argv: list[str] | None = None) -> int:
    # torchrun's agent turns SIGTERM/SIGINT into an exception that stops the workers before they can save
    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", "SIGHUP,SIGQUIT")
    os.environ["MODERNALBERT_LAUNCHER_REPORTS"] = "1"  # ranks that lost a peer leave quietly: the line is ours
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _forward)
    level = os.environ.setdefault("LOGLEVEL", "CRITICAL")  # read when torchrun's loggers are made, at import
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(level)  # its plain module loggers inherit this

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if getattr(args, "signals_to_handle", None) == "SIGTERM,SIGINT,SIGHUP,SIGQUIT":  # torchrun's default
        args.signals_to_handle = os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"]
    try:
        run(args)
    except ChildFailedError as e:
        failures = e.failures
        rank = min(failures, key=lambda r: (_blame(failures[r].exitcode), failures[r].timestamp, r))
        failure = failures[rank]
        status = exit_status(failure.exitcode)
        if failure.exitcode < 0:
            name = signal.Signals(-failure.exitcode).name if -failure.exitcode in signal.valid_signals() else "a signal"
            print(f"torchrun: rank {rank} was killed by {name} (exit status {status})", file=sys.stderr)
        elif status not in (exit_codes.USER_ERROR, exit_codes.REQUEUE, exit_codes.HANG):
            print(f"torchrun: rank {rank} failed with exit status {status} (its error is above)", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
