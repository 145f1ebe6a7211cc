"""``common.tracking.mlflow_client`` opens the state's own tracking store, also in a process that
opens a second state after a first (MLflow exports the first URI as ``MLFLOW_TRACKING_URI``, which
``State.tracking_uri`` lets win), while a user's ``MLFLOW_TRACKING_URI`` still wins."""

from __future__ import annotations

import pytest

from common.state import State


@pytest.fixture()
def no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    import mlflow

    mlflow.set_tracking_uri(None)


def test_two_states_in_one_process_each_get_their_own_store(tmp_path, no_tracking_env):
    import os

    from common.tracking import mlflow_client

    first, second = State(tmp_path / "a").ensure(), State(tmp_path / "b").ensure()
    client = mlflow_client(first)
    client.create_experiment("only-in-a")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # MLflow's export is undone
    client = mlflow_client(second)
    assert client.get_experiment_by_name("only-in-a") is None
    assert str(second.mlflow_dir) in client.tracking_uri
    assert mlflow_client(first).get_experiment_by_name("only-in-a") is not None


def test_a_users_tracking_uri_still_wins(tmp_path, monkeypatch, no_tracking_env):
    import os

    from common.tracking import mlflow_client

    server = f"sqlite:///{tmp_path / 'server.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    client = mlflow_client(State(tmp_path / "a").ensure())
    assert client.tracking_uri == server and os.environ["MLFLOW_TRACKING_URI"] == server
