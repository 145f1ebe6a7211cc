"""Stops a local Airflow (and whatever else a UI or demo started) with every task it runs, and
leaves no task instance or DAG run "running" in its metadata database.

Airflow's task supervisor puts each task process in a process group of its own
(``airflow.sdk.execution_time.supervisor``: ``os.setpgid(0, 0)``), and ``dvc repro`` and
``python -m training.train`` run below it: a TERM to the process group of ``airflow standalone``
or of the scheduler left them running, and the DAG run "running" in the database for ever. So the
processes are found as a tree (``/proc/<pid>/stat``'s parent pid), every process below the given
roots, and as the members of the sessions the roots lead (the callers start each root with a
session of its own: a process whose parent ends first is re-parented out of the tree, not out of
its session); taken before any signal and again while they stop (processes started meanwhile);
TERM first, KILL after ``grace_s``. Then the task instances the stopped processes left
unfinished, and their DAG runs, are marked ``failed`` through Airflow's ORM on the metadata DB
(``$AIRFLOW_HOME``): nothing is left that a scheduler would wait on, and the UI shows the run as
failed, with its logs. More INT/TERM/HUP signals while it stops are held until it is done
(:func:`deferred_signals`).

CLI (``scripts/ui.sh`` calls it from its Ctrl-C/TERM/HUP trap)::

    python scripts/stop_airflow.py --pid <root pid> [--pid ...] [--grace 20]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

UNFINISHED_TI = ("running", "queued", "scheduled", "restarting", "deferred", "up_for_reschedule")
"""Task instance states of work in flight: a stopped Airflow finishes none of them."""


def _processes() -> dict[int, tuple[int, int]]:
    """Every live process's ``(parent pid, session id)``, from ``/proc/<pid>/stat`` (Linux)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        # the command name (2nd field) is in parentheses and may hold spaces: split after it;
        # then state, ppid, pgrp, session
        fields = stat.rsplit(")", 1)[1].split()
        out[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return out


def descendants(roots: Iterable[int]) -> set[int]:
    """The pids of ``roots``, of every live process below them, and of every process in a session
    one of them leads (and below those).

    A process whose parent ends first is re-parented (to init or a subreaper) and leaves the
    tree, but not its session: ``scripts/ui.sh`` starts each component with ``setsid`` and
    ``scripts/demo.py`` starts ``airflow standalone`` in a new session, so a task process whose
    supervisor died is still found. (Airflow's supervisor gives the task a process group of its
    own, not a session.)
    """
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [r for r in roots if r in procs]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
            if procs[pid][1] == pid:  # a session leader: its session's members
                todo.extend(p for p, (_, sid) in procs.items() if sid == pid)
    return found


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(pids: Iterable[int]) -> set[int]:
    live = set()
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":  # a zombie has ended; its parent reaps it
            live.add(pid)
    return live


def stop_tree(roots: Iterable[int], grace_s: float = 20.0) -> set[int]:
    """TERM to every process at or below ``roots``, KILL to those alive ``grace_s`` later.

    Returns:
        The pids signalled (this process and its ancestors never among them).
    """
    me = {os.getpid(), os.getppid()}
    seen = descendants(roots) - me
    _signal(seen, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        new = descendants(seen) - seen - me  # started while the others stopped
        if new:
            _signal(new, signal.SIGTERM)
            seen |= new
        if not _alive(seen):
            return seen
        time.sleep(0.25)
    while live := _alive(seen | (descendants(seen) - me)):
        logger.warning("killing %d process(es) still alive %.0f s after TERM: %s", len(live), grace_s,
                       sorted(live))
        _signal(live, signal.SIGKILL)
        seen |= live
        time.sleep(0.5)
    return seen


def fail_unfinished_runs(reason: str = "Airflow was stopped while this ran") -> tuple[int, int]:
    """Marks the task instances in flight (:data:`UNFINISHED_TI`) and the running or queued DAG
    runs of the metadata DB (``$AIRFLOW_HOME``'s) ``failed``, with their end date; call it once
    no scheduler, executor or task process of that DB is alive.

    Airflow 3's CLI has no command that marks a run failed (``tasks clear`` resets a task for a
    rerun; the REST API's PATCH needs the stopped api-server), so this writes through its ORM.

    Returns:
        ``(task instances, DAG runs)`` marked failed.
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.sdk import timezone
    from airflow.utils.session import create_session
    from sqlalchemy import select

    now = timezone.utcnow()
    with create_session() as session:
        tis = session.scalars(select(TaskInstance).where(TaskInstance.state.in_(UNFINISHED_TI))).all()
        for ti in tis:
            logger.info("task %s of %s: %s -> failed (%s)", ti.task_id, ti.run_id, ti.state, reason)
            ti.state, ti.end_date = "failed", now
        runs = session.scalars(select(DagRun).where(DagRun.state.in_(("running", "queued")))).all()
        for run in runs:
            logger.info("DAG run %s: %s -> failed (%s)", run.run_id, run.state, reason)
            run.state, run.end_date = "failed", now
    return len(tis), len(runs)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that ask a UI or demo to stop (Ctrl-C, a kill or CI timeout, a closed terminal):
while it stops, more of them come (a second Ctrl-C; GNU make, on a TERM, sends its recipe's
process another one) and must not cut the stop short."""


@contextlib.contextmanager
def deferred_signals(signals: Iterable[int] = STOP_SIGNALS) -> Iterator[list[int]]:
    """Holds back ``signals`` inside the block and raises the first one held, with the handler
    that was in place, once the block is left: the block runs to its end, and the process still
    acts on the signal afterwards (a ``SystemExit`` handler exits, the default one terminates).

    Main thread only (:func:`signal.signal`).

    Yields:
        The signals held back so far, in arrival order.
    """
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: held.append(signum)) for sig in signals}
    try:
        yield held
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            logger.info("signal %s arrived while stopping: acting on it now", signal.Signals(held[0]).name)
            signal.raise_signal(held[0])


def stop_airflow(roots: Iterable[int], grace_s: float = 20.0) -> None:
    """:func:`stop_tree`, then :func:`fail_unfinished_runs`, under :func:`deferred_signals`: a
    second Ctrl-C or TERM does not interrupt them; prints what it did (for a CLI)."""
    with deferred_signals():
        stopped = stop_tree(roots, grace_s)
        tis, runs = fail_unfinished_runs()
        print(f"stopped {len(stopped)} process(es); marked {tis} task instance(s) and {runs} DAG run(s) failed",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pid", type=int, action="append", required=True, help="root of a tree to stop")
    parser.add_argument("--grace", type=float, default=20.0, help="seconds between TERM and KILL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # the caller's stop: a second Ctrl-C must not stop the stopping (scripts/ui.sh starts this
    # with both ignored, so none lands before Python's own startup is done)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    stop_airflow(args.pid, args.grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
