"""What the platform's command-line entry points share (``python -m <package>.<module>``).

Only the standard library is imported here, so that any entry point can use it, including one
that runs before the rest of the platform is importable (``promotion.tracking_auth``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any


class InputError(ValueError):
    """An input file the user wrote (a catalog adapter, a configuration file) that cannot be
    used. Its message is one line naming the file, what is wrong and what to write instead;
    :func:`run_command` prints it, without a traceback, and exits with status 2."""


INPUT_ERROR_STATUS = 2
"""Exit status of a command stopped by an :class:`InputError` (as argparse's usage errors)."""


LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Sends the library's log records to stderr (a CLI's ``main()`` calls it; the JSON result
    goes to stdout). Does nothing when the root logger already has a handler (Airflow's task
    runner, pytest): their handlers keep the records, with levels."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)


def step_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The argument parser of a step's CLI, with the option every step has.

    Args:
        module: the step's module, e.g. ``"validation.staged"`` (``prog`` is
            ``python -m <module>``).
        doc: the module docstring; its first line is the description.

    Returns:
        A parser with ``--params FILE`` (``common.params.load_params``'s argument, default
        ``params.yaml``); the caller adds the step's own arguments.
    """
    configure_logging()
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n")[0])
    parser.add_argument("--params", default=None, help="params file (default: params.yaml)")
    return parser


def run_command(command: Callable[[], Any], refused: type[Exception] | tuple[type[Exception], ...] = (),
                status: int = 1, prefix: str = "") -> int:
    """Runs a CLI's command and prints what it returns as one line of JSON.

    Args:
        command: the work, called once; returns JSON types (a step result's ``to_dict()``, a dict).
        refused: the exceptions that mean the command refused, for a reason the user can act on.
        status: the exit status of a refusal.
        prefix: printed before a refusal's reason.

    Returns:
        The exit status: 0, or ``status`` after printing the refusal's reason to stderr, or
        :data:`INPUT_ERROR_STATUS` after printing ``error: <message>`` of an :class:`InputError`
        (a catalog file missing a key...). Any other exception propagates.
    """
    try:
        result = command()
    except refused as exc:
        print(f"{prefix}{exc}", file=sys.stderr)
        return status
    except InputError as exc:  # the user's own file: one line saying what to fix, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    print(json.dumps(result))
    return 0
