"""Daily monitoring of the serving model: score the new day → Evidently drift and quality → alert → retrain.

Runs when ingestion publishes features (the `features` Asset), for the days it ingested; on-call
can re-monitor a range from the form.

* **score** sends the day's flights to the `stable` model through the serving client, in batches,
  and logs the predictions with the model version to `{lake}/predictions/date=…/`.
* **report** compares the day with the reference the training run saved: data drift per model
  input and as a share, prediction drift, and classification quality (labels are known once the
  day's flights have landed). HTML in `{lake}/reports/drift/date=…/`, metrics in `drift_reports`.
* **judge** applies the thresholds in config and raises one alert per day that crosses one.
* **request_retraining** emits the `retrain_requested` Asset that `nightshift_train` listens to,
  when drift persisted or quality dropped (at most once a day; the alert says so). Once Airflow has
  the event, the request is marked emitted; until then a retried judge emits it again.

The first task also delivers any alert still pending (a channel that was down, a spool from a
Postgres outage).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import dag, task

from include.core.access import access_control
from include.core.assets import FEATURES, MONITOR_DAG, RETRAIN_REQUESTED
from include.core.dag_defaults import date_range_params, default_args
from include.core.deadlines import nightly_deadlines

DEFAULT_ARGS = default_args(retry_delay=timedelta(seconds=30), max_retry_delay=timedelta(minutes=10))


def _context(context: dict[str, Any]):
    from include.core.config import MonitorPolicy, load_settings

    return load_settings(), MonitorPolicy.from_env(), context["run_id"]


def _retraining_emitted(context: dict[str, Any]) -> None:
    """`on_success_callback` of request_retraining: it runs once Airflow has recorded the Asset event."""
    import datetime as dt

    from include.core.config import load_settings
    from include.monitor.steps import mark_retrain_emitted

    verdict = context["ti"].xcom_pull(task_ids="judge")
    url = load_settings().require_database_url()
    mark_retrain_emitted(url, dt.date.fromisoformat(verdict["retrain_day"]), dt.datetime.now(dt.UTC))


@dag(
    dag_id=MONITOR_DAG,
    access_control=access_control(MONITOR_DAG),
    description=__doc__.partition(".")[0],
    doc_md=__doc__,
    schedule=[FEATURES],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["nightshift", "monitor"],
    deadline=nightly_deadlines("nightly monitoring must finish"),
    params=date_range_params("monitor", "monitor the days the triggering ingestion published"),
)
def nightshift_monitor() -> None:
    @task
    def days(**context: Any) -> list[str]:
        from include.core.alerts import deliver_pending
        from include.core.calendar import form_days
        from include.core.config import load_settings
        from include.core.lineage import require_known_conf
        from include.monitor.steps import not_yet_monitored, resolve_days

        require_known_conf(context)
        deliver_pending()

        events = (context.get("triggering_asset_events") or {}).get(FEATURES, [])
        windows = [[e.extra["first_day"], e.extra["last_day"]] for e in events if (e.extra or {}).get("first_day")]
        url = load_settings().require_database_url()
        chosen = resolve_days(dict(context["params"]), windows, url)
        if form_days(context["params"]) is None:  # triggered: only what the serving version has not seen
            chosen = not_yet_monitored(url, chosen, context["run_id"])
        return [d.isoformat() for d in chosen]

    @task
    def score(days: list[str], **context: Any) -> list[dict[str, Any]]:
        import datetime as dt

        from include.monitor.steps import score_day

        settings, policy, run_id = _context(context)
        return [score_day(settings, policy, dt.date.fromisoformat(d), run_id) for d in days]

    @task
    def report(scored: list[dict[str, Any]], **context: Any) -> list[dict[str, Any]]:
        from include.monitor.steps import report_day

        settings, policy, run_id = _context(context)
        return [report_day(settings, policy, s, run_id) for s in scored]

    @task
    def judge(reports: list[dict[str, Any]], **context: Any) -> dict[str, Any]:
        from include.monitor.steps import judge as apply_policy

        settings, policy, run_id = _context(context)
        return apply_policy(settings, policy, reports, run_id)

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def wants_retraining(verdict: dict[str, Any]) -> bool:
        return verdict["retrain"]

    @task(outlets=[RETRAIN_REQUESTED], on_success_callback=_retraining_emitted)
    def request_retraining(verdict: dict[str, Any], **context: Any) -> str:
        extra = {"reason": verdict["retrain_reason"], "day": verdict["retrain_day"]}
        context["outlet_events"][RETRAIN_REQUESTED].extra = extra
        return verdict["retrain_reason"]

    verdict = judge(report(score(days())))
    wants_retraining(verdict) >> request_retraining(verdict)


nightshift_monitor()
