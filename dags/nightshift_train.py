"""Nightly training on Feast features: training set → tune → evaluate + ensemble → gate → register.

Runs when fresh features land (the ingest DAG's `features` Asset) or at 02:00 New York time,
whichever comes first; analysts can also train on a chosen window and budget from the form.

* **build_dataset** joins the window's flights to the `flight_delay_v2` FeatureService point in
  time and splits it by time (train, validation, then the last `test_days` as test).
* **is_new** skips the rest when an existing version was trained on the same dataset bytes, by
  the same code, with the same form values (`skipped: identical to vN` in `nightshift.runs`), so
  the night's features event, the 02:00 fallback and a retraining request train once.
* **tune** runs keras-tuner through the training entry point, in a GPU pod
  (`TRAIN_BACKEND=kubernetes`) or as a local subprocess (`TRAIN_BACKEND=local`, the default).
* **evaluate** combines the members (averaging, voting or stacking) and calibrates them into ONE
  SavedModel, scores the test days against the
  gradient-boosting baseline and the production model, and writes the report.
* **gate_and_register** records every check and the version's lineage in Postgres; a blessed
  version emits the `model_candidate` Asset that deployment listens to.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from include.core.access import access_control
from include.core.assets import FEATURES, MODEL_CANDIDATE, RETRAIN_REQUESTED, TRAIN_DAG
from include.core.config import NightlyTraining, task_timeout, tune_shards
from include.core.dag_defaults import default_args
from include.core.deadlines import nightly_deadlines
from include.train.backends import training_step
from include.train.form import tuning_budget_params, whole_number

DEFAULT_ARGS = default_args(retry_delay=timedelta(minutes=1), max_retry_delay=timedelta(minutes=15), dag_id=TRAIN_DAG)
NIGHTLY = NightlyTraining.from_env()  # the form's defaults: what scheduled runs train with
DATASET_URI = "{{ ti.xcom_pull(task_ids='build_dataset')['uri'] }}"
MODELS_URI = "{{ ti.xcom_pull(task_ids='build_dataset')['models_uri'] }}"
TRAIN_PARAMS = {
    "train_days": whole_number(
        NIGHTLY.train_days, 7, 365, "Training days", "Days of flights before validation and test.", "Data window"
    ),
    "test_days": whole_number(
        NIGHTLY.test_days, 1, 60, "Test days", "The most recent days, held out for evaluation.", "Data window"
    ),
    "end_date": Param(
        None,
        type=["null", "string"],
        format="date",
        title="Last day",
        description="Last day of the window; empty = the latest validated day.",
        section="Data window",
    ),
    **tuning_budget_params(NIGHTLY),
}


def _settings_and_params(context: dict[str, Any]):
    from include.core.config import load_settings

    return load_settings(), dict(context["params"])


@dag(
    dag_id=TRAIN_DAG,
    access_control=access_control(TRAIN_DAG),
    description=__doc__.partition(".")[0],
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 2 * * *", timezone="America/New_York"),
        assets=(FEATURES | RETRAIN_REQUESTED),
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="America/New_York"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["nightshift", "train"],
    deadline=nightly_deadlines("nightly training must finish"),
    params=TRAIN_PARAMS,
)
def nightshift_train() -> None:
    @task
    def build_dataset(**context: Any) -> dict[str, Any]:
        from include.core.lineage import require_known_conf
        from include.train.steps import build_dataset as build

        require_known_conf(context)
        settings, params = _settings_and_params(context)
        return build(settings, params, context["run_id"])

    @task
    def find_champion() -> str:
        from include.core.config import load_settings
        from include.train.steps import champion_uri

        return champion_uri(load_settings())

    @task.short_circuit
    def is_new(dataset: dict[str, Any], **context: Any) -> bool:
        from include.train.steps import needs_training

        settings, params = _settings_and_params(context)
        return needs_training(settings, params, dataset, context["run_id"])

    dataset = build_dataset()
    champion = find_champion()
    common = ["--dataset", DATASET_URI, "--out", MODELS_URI, "--seed", "{{ params.seed }}"]
    tune = training_step(
        "tune",
        ["tune", *common, "--tuner", "{{ params.tuner }}", "--max-trials", "{{ params.max_trials }}",
         "--epochs", "{{ params.epochs }}", "--ensemble-size", "{{ params.ensemble_size }}",
         "--warm-start", "{{ params.warm_start }}", "--warm-from", "{{ ti.xcom_pull(task_ids='find_champion') }}"],
        shards=tune_shards(), pool="gpu_training", execution_timeout=task_timeout(TRAIN_DAG, "tune"),
    )  # fmt: skip
    evaluate = training_step(
        "evaluate",
        [
            "evaluate",
            *common,
            "--champion",
            "{{ ti.xcom_pull(task_ids='find_champion') }}",
            "--ensemble-method",
            "{{ params.ensemble_method }}",
            "{{ '--tree-member' if params.tree_member else '--no-tree-member' }}",
        ],
        pool="gpu_training",
        execution_timeout=task_timeout(TRAIN_DAG, "evaluate"),
    )

    @task
    def gate_and_register(dataset: dict, tuned: dict, evaluated: dict, **context: Any) -> dict[str, Any]:
        from include.train.steps import gate_and_register as register

        settings, params = _settings_and_params(context)
        return register(settings, params, dataset, tuned, evaluated, context["run_id"], context["dag_run"].run_after)

    @task.short_circuit
    def is_blessed(registered: dict[str, Any]) -> bool:
        return registered["status"] == "blessed"

    @task(outlets=[MODEL_CANDIDATE])
    def publish_candidate(registered: dict[str, Any], **context: Any) -> int:
        context["outlet_events"][MODEL_CANDIDATE].extra = {"version": registered["version"]}
        return registered["version"]

    is_new(dataset) >> tune >> evaluate
    champion >> tune
    registered = gate_and_register(dataset, tune.output, evaluate.output)
    is_blessed(registered) >> publish_candidate(registered)


nightshift_train()
