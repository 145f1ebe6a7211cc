"""Rollback: move ``champion`` back to an earlier version, recorded in tags.

``--to previous-champion`` swaps ``champion`` and ``previous-champion`` (so a second rollback
rolls forward again); ``--to N`` makes version N the champion and the current one
``previous-champion``. The target first passes the serving check in a fresh process
(:mod:`promotion.serving_check`) when the golden set is at hand. Both versions get tags:
the target ``rollback_from``, ``rollback_reason``, ``rollback_by``; the demoted one
``rolled_back_to``.

CLI::

    python -m promotion.rollback --to previous-champion --reason "complaints about bags"
    python -m promotion.rollback --to 3
"""

from __future__ import annotations

import argparse
import logging
import sys

from common.cli import configure_logging, run_command
from common.params import Params, load_params
from common.state import State
from promotion.registry import ALIAS_CHAMPION, ALIAS_PREVIOUS, alias_version, mlflow_client

logger = logging.getLogger(__name__)

PREVIOUS = "previous-champion"


class RollbackError(RuntimeError):
    """The rollback target does not exist, or fails the serving check."""


def rollback(state: State, params: Params, to: str, reason: str = "", actor: str = "cli",
             check: bool = True) -> dict:
    """Moves ``champion`` to ``to`` (a version number or ``"previous-champion"``).

    Args:
        state: the state folder.
        params: the params (``registry.model_name``).
        to: target version, or ``"previous-champion"``.
        reason: why, recorded in the tags.
        actor: who asked (``cli``, or the Airflow run id).
        check: run the serving check on the target first (skipped when no golden set exists).

    Returns:
        ``{"champion": target, "previous_champion": demoted version, "moved": bool}``.

    Raises:
        RollbackError: when there is no such version / no previous champion, or the target fails
            the serving check; no alias moves then.
        mlflow.exceptions.MlflowException: when the registry cannot be reached.
    """
    from mlflow.exceptions import MlflowException

    client = mlflow_client(state)
    name = params.registry.model_name
    current = alias_version(client, name, ALIAS_CHAMPION)
    if to == PREVIOUS:
        target = alias_version(client, name, ALIAS_PREVIOUS)
        if target is None:
            raise RollbackError(f"{name} has no {ALIAS_PREVIOUS} alias: name a version with --to N")
    else:
        if not str(to).isdigit():
            raise RollbackError(f"--to must be a version number or {PREVIOUS!r}, got {to!r}")
        target = str(int(to))
        try:
            client.get_model_version(name, target)
        except MlflowException as exc:
            raise RollbackError(f"{name} has no version {target}") from exc
    if str(target) == str(current):
        logger.info(f"[rollback] v{target} is already the champion: nothing to do")
        return {"champion": current, "previous_champion": alias_version(client, name, ALIAS_PREVIOUS),
                "moved": False}
    golden = state.golden_dir / "golden.parquet"
    if check and golden.exists():
        from promotion.registry import golden_frame
        from promotion.serving_check import check_serving
        from training.serving import model_input
        rows = model_input(golden_frame(state).head(5)).to_dict("records")
        served = check_serving(state.tracking_uri, f"models:/{name}/{target}", rows)
        if not served["ok"]:
            raise RollbackError(f"version {target} fails the serving check, champion stays v{current}: "
                                f"{served['detail']}")
    if current is not None:
        client.set_registered_model_alias(name, ALIAS_PREVIOUS, current)
        client.set_model_version_tag(name, current, "rolled_back_to", str(target))
    client.set_model_version_tag(name, target, "rollback_from", str(current))
    client.set_model_version_tag(name, target, "rollback_reason", reason or "(none given)")
    client.set_model_version_tag(name, target, "rollback_by", actor)
    client.set_registered_model_alias(name, ALIAS_CHAMPION, target)
    logger.info(f"[rollback] champion -> v{target} (was v{current}); reason: {reason or '(none given)'}")
    return {"champion": str(target), "previous_champion": current, "moved": True}


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="python -m promotion.rollback", description=__doc__.split("\n")[0])
    parser.add_argument("--to", required=True, help="a version number, or previous-champion")
    parser.add_argument("--reason", default="")
    parser.add_argument("--no-check", action="store_true", help="skip the serving check of the target")
    parser.add_argument("--params", default=None)
    args = parser.parse_args(argv)
    return run_command(lambda: rollback(State.from_env(), load_params(args.params), args.to, args.reason, "cli",
                                        check=not args.no_check),
                       RollbackError, status=2, prefix="rollback refused: ")


if __name__ == "__main__":
    sys.exit(main())
