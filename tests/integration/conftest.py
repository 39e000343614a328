"""Shared integration fixtures: the DAG bag, and one trained model for the train and deploy tests.

June–July 2013 is ingested first (its own days, apart from the ingest tests' May), then the train
DAG trains on 44 days, validates on 7 and tests on the last 10, with a small budget.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from include import db
from include.config import load_settings
from include.serving.process import free_port

DAGS = Path(__file__).resolve().parents[2] / "dags"
START, END = dt.date(2013, 6, 1), dt.date(2013, 7, 31)
CONF = {"end_date": END.isoformat(), "train_days": 44, "test_days": 10, "tuner": "random", "max_trials": 2,
        "epochs": 4, "ensemble_size": 2, "seed": 11}  # fmt: skip


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="session")
def trained(dagbag, db_url):
    ingest = dagbag.get_dag("nightshift_ingest").test(
        run_conf={"start_date": START.isoformat(), "end_date": END.isoformat()}
    )
    assert ingest.state == "success"
    run = dagbag.get_dag("nightshift_train").test(run_conf=CONF)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert run.state == "success", states
    from include.registry import model_versions

    with db.engine(db_url).connect() as conn:
        row = conn.execute(sa.select(model_versions).where(model_versions.c.run_id == run.run_id)).mappings().one()
    return run, dict(row), states


@pytest.fixture(scope="session")
def serving(tmp_path_factory):
    """The local server on a free port over a fresh serving dir, configured through the environment."""
    from include.serving.process import local_server

    saved = {k: os.environ.get(k) for k in ("NIGHTSHIFT_SERVING_DIR", "NIGHTSHIFT_SERVING_URL")}
    os.environ["NIGHTSHIFT_SERVING_DIR"] = str(tmp_path_factory.mktemp("serving"))
    os.environ["NIGHTSHIFT_SERVING_URL"] = f"http://127.0.0.1:{free_port()}"
    os.environ["NIGHTSHIFT_DEPLOY_CANARY_REQUESTS"] = "20"
    settings = load_settings()
    try:
        with local_server(settings):
            yield settings
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.environ.pop("NIGHTSHIFT_DEPLOY_CANARY_REQUESTS", None)


@pytest.fixture(scope="session")
def stable_model(dagbag, serving, trained) -> int:
    """The trained model serving as `stable` (deployed here unless the deploy tests left one)."""
    from include.deploy import read_state

    state = read_state(serving)
    if state.stable is None:
        run = dagbag.get_dag("nightshift_deploy").test(run_conf={"version": trained[1]["version"], "action": "promote"})
        assert run.state == "success"
        state = read_state(serving)
    return state.stable
