"""Shared integration fixtures: the DAG bag, and one trained model for the train and deploy tests.

June–July 2013 is ingested first (its own days, apart from the ingest tests' May), then the train
DAG trains on 44 days, validates on 7 and tests on the last 10, with a small budget.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from include import db

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
