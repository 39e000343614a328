"""Every DAG imports, is documented, tagged and retried, and parses cheaply.

Parsing is checked in a fresh interpreter: no connection or Variable lookup, and none of the
heavy libraries (TensorFlow, pandas, GX, Feast, Evidently) imported by loading the DAG folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_IDS = [
    "nightshift_ingest",
    "nightshift_train",
    "nightshift_deploy",
    "nightshift_monitor",
    "nightshift_predict_batch",
    "nightshift_backtest",
]
APPROVED_TAGS = {"nightshift", "ingest", "train", "deploy", "monitor", "predict"}
HEAVY_MODULES = ["tensorflow", "keras", "pandas", "great_expectations", "feast", "evidently", "sklearn"]

PARSE_PROBE = r"""
import json, sys
lookups = []
from airflow.sdk.definitions.connection import Connection
from airflow.sdk.definitions.variable import Variable
from airflow.sdk.bases.hook import BaseHook
Connection.get = classmethod(lambda cls, *a, **k: lookups.append(("connection", a)))
Variable.get = staticmethod(lambda *a, **k: lookups.append(("variable", a)))
BaseHook.get_connection = classmethod(lambda cls, *a, **k: lookups.append(("connection", a)))
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dag_ids),
                  "lookups": [str(x) for x in lookups], "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def parse_report() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PARSE_PROBE, str(DAGS), json.dumps(HEAVY_MODULES)],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dags_import_without_errors(dagbag, parse_report) -> None:
    assert dagbag.import_errors == {}
    assert parse_report["errors"] == {}
    assert set(DAG_IDS) <= set(dagbag.dag_ids)


def test_parsing_looks_up_no_connection_or_variable(parse_report) -> None:
    assert parse_report["lookups"] == []


def test_parsing_imports_no_heavy_library(parse_report) -> None:
    assert parse_report["heavy"] == []


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_dag_is_tagged_retried_and_documented(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert dag.tags
    assert set(dag.tags) <= APPROVED_TAGS
    assert dag.doc_md
    assert dag.description
    assert not dag.catchup
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id
        assert task.retry_exponential_backoff, task.task_id


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_every_task_has_an_execution_timeout_from_the_config(dagbag, dag_id: str) -> None:
    """A hung step fails (and retries) instead of holding its pool slot forever; deploy and monitor get theirs
    through `default_args()`, the long steps their own (include/core/config.py)."""
    from include.core.config import task_timeout

    for task in dagbag.dags[dag_id].tasks:
        assert task.execution_timeout, f"{dag_id}.{task.task_id} has no execution_timeout"
        assert task.execution_timeout == task_timeout(dag_id, task.task_id), task.task_id


def test_the_long_steps_get_longer_timeouts_than_their_dag(dagbag) -> None:
    from include.core.config import task_timeout

    for dag_id, task_id in [("nightshift_ingest", "materialize"), ("nightshift_train", "tune"),
                            ("nightshift_train", "evaluate")]:  # fmt: skip
        assert dagbag.dags[dag_id].get_task(task_id).execution_timeout > task_timeout(dag_id), task_id


def test_ingest_form_takes_a_date_range(dagbag) -> None:
    params = dagbag.dags["nightshift_ingest"].params
    for name in ("start_date", "end_date"):
        schema = params.get_param(name).schema
        assert schema["format"] == "date"
        assert "null" in schema["type"]
        assert schema.get("title")
        assert params.get_param(name).description


@pytest.mark.parametrize(
    ("dag_id", "deadline"),
    [("nightshift_ingest", "ingest_within_hours_of_queued"), ("nightshift_train", "nightly_chain_by_cutoff"),
     ("nightshift_deploy", "nightly_chain_by_cutoff"), ("nightshift_monitor", "nightly_chain_by_cutoff")],
)  # fmt: skip
def test_dags_have_deadline_alerts_when_enabled(monkeypatch, dag_id: str, deadline: str) -> None:
    import importlib
    import sys

    monkeypatch.setenv("NIGHTSHIFT_DEADLINES", "on")
    sys.path.insert(0, str(DAGS))
    try:
        module = importlib.import_module(dag_id)
        importlib.reload(module)
        alerts = getattr(module, dag_id)().deadline
    finally:
        sys.path.remove(str(DAGS))
    assert [d.name for d in alerts] == [deadline]
    assert alerts[0].callback.path == "include.core.deadlines.deadline_missed"
    if deadline == "ingest_within_hours_of_queued":
        assert alerts[0].interval.total_seconds() == 2 * 3600
        # Not Airflow's DAGRUN_QUEUED_AT: 3.3.2 fails to clear a run carrying one (plugins/nightshift_deadlines.py).
        assert type(alerts[0].reference).__name__ == "RunQueuedAt"
    else:
        assert type(alerts[0].reference).__name__ == "DailyUtcDeadline"
        assert (alerts[0].reference.hour, alerts[0].reference.minute) == (6, 0)


def test_the_nightly_cutoff_is_the_next_0600_utc_after_queuing() -> None:
    import datetime as dt

    from nightshift_deadlines import next_cutoff

    utc = dt.UTC
    assert next_cutoff(dt.datetime(2026, 11, 22, 2, 0, tzinfo=utc), 6, 0) == dt.datetime(2026, 11, 22, 6, 0, tzinfo=utc)
    assert next_cutoff(dt.datetime(2026, 11, 22, 7, 0, tzinfo=utc), 6, 0) == dt.datetime(2026, 11, 23, 6, 0, tzinfo=utc)
    new_york = dt.timezone(dt.timedelta(hours=-5))
    assert next_cutoff(dt.datetime(2026, 11, 21, 22, 0, tzinfo=new_york), 6, 0) == dt.datetime(
        2026, 11, 22, 6, 0, tzinfo=utc
    )


def test_the_deadline_reference_is_registered_by_a_plugin() -> None:
    from airflow import plugins_manager

    registered = plugins_manager.get_deadline_references_plugins()
    assert "nightshift_deadlines.DailyUtcDeadline" in registered


def test_deploy_runs_on_a_blessed_candidate_and_its_form_takes_version_and_action(dagbag) -> None:
    dag = dagbag.dags["nightshift_deploy"]
    assert [asset.name for asset in dag.timetable.asset_condition.objects] == ["model_candidate"]
    action = dag.params.get_param("action").schema
    assert action["enum"] == ["canary", "promote", "rollback"]
    assert dag.params.get_param("version").schema["minimum"] == 1
    serving = [t for t in dag.tasks if t.task_id in ("infra_validate", "canary", "promote", "rollback", "retire")]
    assert {t.pool for t in serving} == {"serving_deploy"}
    outlets = {t.task_id: [o.name for o in t.outlets] for t in dag.tasks}
    assert outlets["promote"] == ["model_serving"]


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_every_form_field_explains_itself_to_an_analyst(dagbag, dag_id: str) -> None:
    params = dagbag.dags[dag_id].params
    assert params, f"{dag_id} has no trigger form"
    for name, param in params.items():
        schema = param.schema
        assert schema.get("title"), f"{dag_id}.{name}: no title"
        assert schema.get("section"), f"{dag_id}.{name}: no section"
        assert param.description or schema.get("values_display"), f"{dag_id}.{name}: no description"
        assert schema.get("type"), f"{dag_id}.{name}: untyped"
        if "integer" in schema["type"]:
            assert "minimum" in schema, f"{dag_id}.{name}: no lower bound"
        if "enum" in schema:
            assert set(schema.get("values_display", {})) in (set(), set(schema["enum"]))
    params.validate()  # the defaults are a valid form


@pytest.mark.parametrize(
    ("dag_id", "field", "bad"),
    [
        ("nightshift_ingest", "start_date", "2013-02-30"),
        ("nightshift_train", "train_days", 3),
        ("nightshift_train", "epochs", 0),
        ("nightshift_train", "tuner", "annealing"),
        ("nightshift_train", "ensemble_method", "bagging"),
        ("nightshift_train", "warm_start", "always"),
        ("nightshift_backtest", "ends", "2013-3-31"),
        ("nightshift_backtest", "epochs", 0),
        ("nightshift_deploy", "action", "delete"),
        ("nightshift_deploy", "version", 0),
        ("nightshift_monitor", "end_date", "yesterday"),
    ],
)
def test_a_bad_form_value_is_refused_naming_the_field(dagbag, dag_id: str, field: str, bad: object) -> None:
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags[dag_id].params)
    with pytest.raises(ParamValidationError, match=f"Invalid input for param {field}"):
        params[field] = bad


def test_a_conf_key_that_is_no_form_field_is_named() -> None:
    from include.core.lineage import unknown_conf_keys

    assert unknown_conf_keys({"start_dte": "2013-01-01", "end_date": None}, ["start_date", "end_date"]) == ["start_dte"]
    assert unknown_conf_keys(None, ["start_date"]) == []


def test_the_train_forms_defaults_are_the_nightly_budget(dagbag) -> None:
    """Scheduled runs take the form's defaults: they are NIGHTSHIFT_NIGHTLY_* (include/core/config.py)."""
    import dataclasses

    from include.core.config import NightlyTraining

    budget = dataclasses.asdict(NightlyTraining.from_env())
    params = dagbag.dags["nightshift_train"].params
    assert {name: params[name] for name in budget} == budget
