"""Rolling backtest: the nightly training on several past test weeks, each against gradient boosting.

From the form: the test weeks' last days and the training budget (the nightly one by default).

* **plan** checks that every day the windows read (with the week of history before each) passed
  validation; a missing stretch fails the run at once, naming it, so an analyst can ingest it with
  `nightshift_ingest` first. The backtest never ingests by itself: that would move the latest
  validated day under the nightly training.
* **run_window**, one per window, builds the point-in-time training set and runs the training entry
  point's `tune` and `evaluate`, as the train DAG's local backend does. Nothing is registered.
* **report** writes `{lake}/reports/backtest/<run>/` (report.json, an HTML page, one plot per metric).

`make backtest` runs the same windows on this machine and ingests what they need itself.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task

from include.core.access import access_control
from include.core.assets import BACKTEST_DAG
from include.core.config import NightlyTraining, task_timeout
from include.core.dag_defaults import default_args
from include.train.form import tuning_budget_params

DEFAULT_ARGS = default_args(
    retry_delay=timedelta(minutes=1), max_retry_delay=timedelta(minutes=10), dag_id=BACKTEST_DAG
)
NIGHTLY = NightlyTraining.from_env()
DEFAULT_ENDS = "2013-03-31,2013-06-30,2013-09-30,2013-12-24"  # include.train.backtest.DEFAULT_ENDS


def _budget(params: dict[str, Any]):
    return NightlyTraining(**{k: params[k] for k in ("tuner", "max_trials", "epochs", "ensemble_size",
                                                     "ensemble_method", "tree_member", "seed")},
                           train_days=NIGHTLY.train_days, test_days=NIGHTLY.test_days)  # fmt: skip


@dag(
    dag_id=BACKTEST_DAG,
    access_control=access_control(BACKTEST_DAG),
    description=__doc__.partition(".")[0],
    doc_md=__doc__,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["nightshift", "train"],
    params={
        "ends": Param(
            DEFAULT_ENDS,
            type="string",
            pattern=r"^\s*\d{4}-\d{2}-\d{2}(\s*,\s*\d{4}-\d{2}-\d{2})*\s*$",
            title="Test weeks' last days",
            description="YYYY-MM-DD, comma-separated.",
            section="Windows",
        ),
        **tuning_budget_params(NIGHTLY, warm_start=False),
    },
)
def nightshift_backtest() -> None:
    @task
    def plan(**context: Any) -> list[str]:
        from include.core.config import load_settings
        from include.core.errors import PermanentError
        from include.core.lineage import require_known_conf
        from include.train.backtest import missing_stretches, parse_ends

        require_known_conf(context)
        budget = _budget(dict(context["params"]))
        ends = parse_ends(context["params"]["ends"], budget)
        missing = missing_stretches(load_settings().require_database_url(), ends, budget)
        if missing:
            stretches = ", ".join(f"{a}…{b}" for a, b in missing)
            raise PermanentError(f"the windows need days that are not validated: {stretches}; run "
                                 "nightshift_ingest for them first")  # fmt: skip
        return [end.isoformat() for end in ends]

    @task(max_active_tis_per_dag=1, pool="gpu_training", execution_timeout=task_timeout(BACKTEST_DAG, "run_window"))
    def run_window(end: str, **context: Any) -> dict[str, Any]:
        import datetime as dt

        from include.core.config import load_settings
        from include.train.backtest import run_window as run

        return run(load_settings(), dt.date.fromisoformat(end), _budget(dict(context["params"])))

    @task
    def report(windows: list[dict[str, Any]], **context: Any) -> dict[str, Any]:
        from include.core.config import load_settings
        from include.train.backtest import publish_report, summarize

        summary = summarize(sorted(windows, key=lambda w: w["test_end"]), _budget(dict(context["params"])))
        summary["report"] = publish_report(load_settings(), summary, context["run_id"])
        return {k: summary[k] for k in ("min_auc_ratio", "max_ece", "max_slice_gap", "minutes", "report")}

    report(run_window.expand(end=plan()))


nightshift_backtest()
