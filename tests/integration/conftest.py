"""Fixtures shared by integration modules: one tiny model trained once per test session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def tiny_trained(fashion_dir, tmp_path_factory) -> dict:
    """A state whose DVC workspace holds ~300 real fashion listings, versioned and trained.

    Trained once through the real DVC pipeline (prepare -> train -> evaluate) and shared by the
    promotion, reproduce and PostgreSQL modules; each registers into the tracking store it tests.

    Returns:
        ``{"state", "params", "data" (version_data result), "trained" (reproduce result)}``.
    """
    from common.params import write_params
    from tests.integration.test_promotion_registry import build_and_train, tiny_params

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    params = tiny_params()
    state, data, trained = build_and_train(fashion_dir, tmp_path_factory.mktemp("tiny"), params)
    write_params(params, state.root / "params.yaml")
    return {"state": state, "params": params, "data": data, "trained": trained}
