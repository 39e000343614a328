"""Monitoring with Evidently and alerts to real receivers (aiosmtpd and an HTTP hook, see conftest).

The stable model is the one trained on June–July 2013; the monitored days are the first days of
August, ingested here. Each alert source must give exactly one alert, through mail, webhook and
the `alerts` table, with the right severity and link.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from airflow.sdk import ObjectStoragePath

from include import db
from include.contract.features import MODEL_FEATURES
from include.core import lake
from include.core.alerts import Alert, send
from include.core.config import ConfigError, MonitorPolicy
from include.db import alerts, drift_reports, retrain_requests
from include.monitor.steps import judge, predictions_file, report_day

pytestmark = pytest.mark.integration
DAY = dt.date(2013, 8, 1)
DRIFT_DAY = dt.date(2013, 8, 2)


def _alerts(db_url: str, kind: str) -> list[dict]:
    with db.engine(db_url).connect() as conn:
        rows = conn.execute(sa.select(alerts).where(alerts.c.kind == kind).order_by(alerts.c.id)).mappings().all()
    return [dict(r) for r in rows]


def _delivered(receivers, title: str) -> tuple[int, int]:
    mails = [m for m in receivers["mails"] if title in m["subject"]]
    posts = [p["json"] for p in receivers["posts"] if p["json"]["text"].endswith(title)]
    if mails:
        assert "How bad:" in mails[0]["body"]
        assert mails[0]["to"] == ["oncall@example.com"]
    return len(mails), len(posts)


def _assert_one(db_url: str, receivers, kind: str, severity: str, run_id: str | None = None) -> dict:
    """Exactly one alert of `kind` (from `run_id`, when other tests' runs raise the same kind)."""
    rows = [r for r in _alerts(db_url, kind) if run_id is None or r["run_id"] == run_id]
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["severity"] == severity
    assert row["deliveries"]["email"].startswith("sent to"), row["deliveries"]
    assert row["deliveries"]["webhook"].startswith("posted to"), row["deliveries"]
    assert _delivered(receivers, row["title"]) == (1, 1)
    return row


@pytest.fixture(scope="module")
def monitored(dagbag, stable_model, db_url):
    ingest = dagbag.get_dag("nightshift_ingest").test(
        run_conf={"start_date": DAY.isoformat(), "end_date": DRIFT_DAY.isoformat()}
    )
    assert ingest.state == "success"
    run = dagbag.get_dag("nightshift_monitor").test(run_conf={"start_date": DAY.isoformat(), "end_date": None})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert run.state == "success", states
    report = run.get_task_instance("report").xcom_pull(task_ids="report")[0]
    return run, report


def test_a_day_is_scored_by_the_stable_model_and_logged(monitored, stable_model, settings) -> None:
    _, report = monitored
    scored = lake.read_parquet(predictions_file(settings, DAY))
    assert len(scored) == report["rows"] > 500
    assert set(scored["model_version"]) == {stable_model}
    assert scored["prediction"].between(0, 1).all()


def test_drift_and_quality_metrics_are_a_time_series_in_postgres(monitored, db_url) -> None:
    _, report = monitored
    with db.engine(db_url).connect() as conn:
        rows = pd.read_sql(sa.select(drift_reports).where(drift_reports.c.partition_date == DAY), conn)
    metrics = set(rows["metric"])
    assert {"feature_drift", "drift_share", "prediction_drift", "auc", "precision", "recall", "brier", "ece"} <= metrics
    assert set(rows.loc[rows["metric"] == "feature_drift", "feature"]) == set(MODEL_FEATURES)
    auc = rows.loc[rows["metric"] == "auc", "value"].item()
    assert auc == pytest.approx(report["auc"])
    assert 0.5 < auc < 1


def test_the_drift_report_opens_and_names_the_features(monitored) -> None:
    _, report = monitored
    html = ObjectStoragePath(report["report"]).read_text()
    assert "<html" in html.lower()
    for feature in MODEL_FEATURES:
        assert f'"{feature}"' in html


def test_a_day_of_the_versions_own_test_window_raises_nothing(stable_model, trained, settings, db_url) -> None:
    """A day the version was tested on is, by definition, like its reference: no drift, no quality drop."""
    from include.monitor.steps import crossings, score_day

    day = dt.date.fromisoformat(trained[1]["data_window"]["end"])
    policy = MonitorPolicy.from_env()
    summary = report_day(settings, policy, score_day(settings, policy, day, "in-window"), "in-window")
    assert summary["rows"] > policy.min_rows
    assert summary["worst_test_day_auc"] <= summary["auc"]
    assert crossings(summary, policy) == [], summary["feature_drift"]
    assert judge(settings, policy, [summary], "in-window")["alerts"] == []
    with db.engine(db_url).connect() as conn:
        limits = dict(conn.execute(sa.select(drift_reports.c.feature, drift_reports.c.threshold).where(
            drift_reports.c.partition_date == day, drift_reports.c.metric == "feature_drift")).all())  # fmt: skip
    assert limits == {f: summary["drift_thresholds"][f] for f in MODEL_FEATURES}
    assert min(limits.values()) == policy.feature_drift_threshold < limits["temp"]


def test_injected_weather_drift_gives_exactly_one_alert(monitored, stable_model, settings, db_url,
                                                        alert_receivers) -> None:  # fmt: skip
    """The next day replayed with its weather far outside the reference, scored by the real server. The drifted
    inputs are ranked by the version's importance, and weigh their share of it; a policy whose limit that share
    crosses (here any share above 0) gives exactly one drift warning."""
    import dataclasses

    from include.contract.inputs import serving_columns
    from include.monitor.steps import day_frame
    from include.serving.client import client_for

    frame = day_frame(settings, DRIFT_DAY)
    frame["temp"] = frame["temp"] + 60.0
    frame["wind_speed"] = frame["wind_speed"] * 4 + 20
    frame["pressure"] = frame["pressure"] - 80.0
    frame["visib"] = 0.5
    with client_for(settings) as client:
        predictions = np.ravel(client.predict_columns(serving_columns(frame), version=stable_model))
    scored = frame.assign(prediction=predictions, model_version=stable_model)
    lake.write_parquet(predictions_file(settings, DRIFT_DAY), scored)
    policy = dataclasses.replace(MonitorPolicy.from_env(), max_weighted_drift=0.0)
    summary = report_day(settings, policy, {"day": DRIFT_DAY.isoformat(), "model_version": stable_model}, "drift-test")
    assert {"temp", "wind_speed", "pressure", "visib"} <= set(summary["drifted_features"])
    weights = [summary["importance_weights"][f] for f in summary["drifted_features"]]
    assert weights == sorted(weights, reverse=True)  # the most important drifted input first
    assert summary["weighted_drift"] == pytest.approx(sum(weights), abs=1e-5)
    assert summary["weighted_drift"] > policy.max_weighted_drift
    verdict = judge(settings, policy, [summary], "drift-test")
    verdict_again = judge(settings, policy, [summary], "drift-test")  # a retry: deduplicated
    assert len(verdict["alerts"]) == 1
    assert verdict_again["alerts"][0]["alert_id"] is None
    assert not verdict["retrain"]  # one day of drift is not yet a persisting one
    # The fault is in the inputs, so the alert is a drift warning, not a quality drop.
    row = _assert_one(db_url, alert_receivers, "drift", "warning", "drift-test")
    assert [r for r in _alerts(db_url, "quality_drop") if r["run_id"] == "drift-test"] == []
    assert row["link"] == summary["report"]
    assert "temp" in row["message"]
    assert "of the model's importance" in row["message"]
    assert "(limit 0%" in row["message"]
    assert "Next:" in row["message"]
    html = ObjectStoragePath(summary["report"]).read_text()
    assert '"temp"' in html
    assert "Detected" in html


def test_predictions_ranked_backwards_give_exactly_one_quality_drop_alert(monitored, stable_model, trained, settings,
                                                                          db_url, alert_receivers) -> None:  # fmt: skip
    """The next day's real inputs, with the stable model's predictions handed back to the flights in reverse
    order: the same values (no prediction drift), ROC-AUC about 1 - the day's, far below the test AUC."""
    from sklearn.metrics import roc_auc_score

    from include.contract.features import LABEL_KEY
    from include.contract.inputs import serving_columns
    from include.monitor.steps import day_frame
    from include.serving.client import client_for

    frame = day_frame(settings, DRIFT_DAY)
    with client_for(settings) as client:
        predictions = np.ravel(client.predict_columns(serving_columns(frame), label="stable"))
    backwards = np.sort(predictions)[::-1][predictions.argsort().argsort()]
    labels = frame[LABEL_KEY].astype(int)
    assert roc_auc_score(labels, backwards) < trained[1]["metrics"]["auc"] - 0.2 < roc_auc_score(labels, predictions)
    lake.write_parquet(predictions_file(settings, DRIFT_DAY), frame.assign(prediction=backwards,
                                                                           model_version=stable_model))  # fmt: skip
    policy = MonitorPolicy.from_env()
    summary = report_day(settings, policy, {"day": DRIFT_DAY.isoformat(), "model_version": stable_model},
                         "quality-test")  # fmt: skip
    assert summary["auc"] == pytest.approx(roc_auc_score(labels, backwards))
    verdict = judge(settings, policy, [summary], "quality-test")
    assert len(verdict["alerts"]) == 1
    row = _assert_one(db_url, alert_receivers, "quality_drop", "critical", "quality-test")
    assert "ROC-AUC" in row["message"]
    assert row["link"] == summary["report"]
    # A quality drop asks for retraining, recorded in its own table, once, and a re-run of the day's
    # report (a retried task) rewrites the day's metrics without touching the request.
    assert verdict["retrain_reason"] == f"ROC-AUC dropped on {DRIFT_DAY}"
    judge(settings, policy, [summary], "quality-test")
    report_day(settings, policy, {"day": DRIFT_DAY.isoformat(), "model_version": stable_model}, "quality-test")
    with db.engine(db_url).connect() as conn:
        requests = conn.execute(sa.select(retrain_requests)).mappings().all()
        metrics = set(conn.execute(sa.select(drift_reports.c.metric).where(
            drift_reports.c.partition_date == DRIFT_DAY)).scalars())  # fmt: skip
    assert [(r["partition_date"], r["reason"], r["model_version"], r["run_id"]) for r in requests] == [
        (DRIFT_DAY, f"ROC-AUC dropped on {DRIFT_DAY}", stable_model, "quality-test")
    ]
    assert "auc_drop" in metrics
    assert "retrain_requested" not in metrics


def test_an_input_with_no_values_is_reported_as_drifted_not_a_crash(monitored, stable_model, settings,
                                                                      db_url) -> None:  # fmt: skip
    """A day whose history input is empty (no earlier days ingested, or a feed down): Evidently
    refuses the column, the monitor reports it as the worst drift instead of failing the day."""
    from include.contract.inputs import serving_columns
    from include.monitor.steps import crossings, day_frame
    from include.serving.client import client_for

    frame = day_frame(settings, DRIFT_DAY)
    frame["carrier_delay_rate_7d"] = np.nan
    with client_for(settings) as client:
        predictions = np.ravel(client.predict_columns(serving_columns(frame), label="stable"))
    lake.write_parquet(predictions_file(settings, DRIFT_DAY), frame.assign(prediction=predictions,
                                                                           model_version=stable_model))  # fmt: skip
    policy = MonitorPolicy.from_env()
    summary = report_day(settings, policy, {"day": DRIFT_DAY.isoformat(), "model_version": stable_model}, "empty-test")
    assert summary["empty_features"] == ["carrier_delay_rate_7d"]
    assert summary["drifted_features"][0] == "carrier_delay_rate_7d"
    assert "carrier_delay_rate_7d: no values at all on the day or in the reference" in crossings(summary, policy)
    with db.engine(db_url).connect() as conn:
        row = conn.execute(sa.select(drift_reports).where(
            drift_reports.c.partition_date == DRIFT_DAY, drift_reports.c.feature == "carrier_delay_rate_7d",
            drift_reports.c.metric == "feature_drift")).mappings().one()  # fmt: skip
    assert row["value"] is None
    assert row["crossed"]


def test_a_failing_task_gives_exactly_one_alert(dagbag, stable_model, db_url, alert_receivers) -> None:
    never_ingested = {"start_date": "2013-12-30", "end_date": None}
    run = dagbag.get_dag("nightshift_monitor").test(run_conf=never_ingested)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states["score"] == "failed"
    row = _assert_one(db_url, alert_receivers, "task_failed", "critical", run.run_id)
    assert (row["dag_id"], row["task_id"]) == ("nightshift_monitor", "score")
    assert "/dags/nightshift_monitor/runs/" in row["link"]
    assert "/tasks/score" in row["link"]
    assert "2013-12-30" in row["message"]


def test_a_failed_validation_gives_exactly_one_alert(dagbag, db_url, alert_receivers) -> None:
    os.environ["NIGHTSHIFT_ROW_COUNT_TOLERANCE_PCT"] = "0"  # the day's row count is outside [mean, mean+1]
    try:
        run = dagbag.get_dag("nightshift_ingest").test(run_conf={"start_date": "2013-08-03", "end_date": None})
    finally:
        os.environ.pop("NIGHTSHIFT_ROW_COUNT_TOLERANCE_PCT")
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states["validate"] == "failed"
    row = _assert_one(db_url, alert_receivers, "validation_failed", "critical", run.run_id)
    assert row["link"].endswith(".html")
    assert "2013-08-03" in row["title"]
    assert [r for r in _alerts(db_url, "task_failed") if r["run_id"] == run.run_id] == []  # no second alert


def test_a_missed_deadline_gives_exactly_one_alert(db_url, alert_receivers) -> None:
    """The AsyncCallback, called as the triggerer calls it (context shape of Airflow 3.3's Deadline.handle_miss)."""
    from include.core.deadlines import deadline_missed

    context = {
        "dag_run": {"dag_id": "nightshift_train", "dag_run_id": "scheduled__2026-11-22T07:00:00+00:00",
                    "state": "running", "queued_at": "2026-11-22T07:00:02Z", "start_date": "2026-11-22T07:00:05Z"},
        "deadline": {"id": "0199", "deadline_time": dt.datetime(2026, 11, 23, 6, 0, tzinfo=dt.UTC)},
    }  # fmt: skip
    asyncio.run(deadline_missed(context, what="nightly training must finish by 06:00 UTC"))
    asyncio.run(deadline_missed(context, what="nightly training must finish by 06:00 UTC"))
    row = _assert_one(db_url, alert_receivers, "deadline_missed", "critical")
    assert "/dags/nightshift_train/runs/scheduled__2026-11-22T07%3A00%3A00%2B00%3A00" in row["link"]
    assert "06:00" in row["title"]


def test_the_same_alert_within_the_window_is_sent_once(db_url) -> None:
    alert = Alert(kind="unit_dedup", key="k1", severity="info", title="dedup probe", impact="none")
    first = send(db_url, alert)
    assert first is not None
    assert send(db_url, alert) is None
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=MonitorPolicy().dedup_hours + 1)
    assert send(db_url, alert, at=later) is not None


def test_an_unreachable_channel_loses_nothing(db_url, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_NIGHTSHIFT_ALERT_WEBHOOK", '{"conn_type": "http", "host": "127.0.0.1", '
                       '"port": 9, "schema": "http"}')  # fmt: skip
    alert_id = send(db_url, Alert(kind="unit_down", key="k", severity="warning", title="down probe", impact="x"))
    row = next(r for r in _alerts(db_url, "unit_down") if r["id"] == alert_id)
    assert row["deliveries"]["webhook"].startswith("failed: ConnectError")
    assert row["deliveries"]["email"].startswith("sent to")


def test_monitoring_thresholds_come_from_config() -> None:
    policy = MonitorPolicy.from_env(
        {"NIGHTSHIFT_MONITOR_MAX_DRIFT_SHARE": "0.5", "NIGHTSHIFT_MONITOR_PERSIST_DAYS": "2"}
    )
    assert (policy.max_drift_share, policy.persist_days) == (0.5, 2)
    with pytest.raises(ConfigError, match="NIGHTSHIFT_MONITOR_MIN_ROWS"):
        MonitorPolicy.from_env({"NIGHTSHIFT_MONITOR_MIN_ROWS": "many"})


def test_a_judge_retried_after_recording_the_request_still_emits_it(dagbag, monitored, db_url, alert_receivers,
                                                                     monkeypatch) -> None:  # fmt: skip
    """The first attempt of `judge` records the retraining request, then fails sending the day's alert (the
    network went away); its retry must still emit `retrain_requested`, and the request stays one row.
    Runs last: it re-judges DAY with a policy where any drift asks for retraining."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from include.monitor import steps

    with db.engine(db_url).begin() as conn:
        conn.execute(sa.delete(retrain_requests))  # a night with no request yet, and no alert for the day
        conn.execute(sa.delete(alerts).where(alerts.c.kind.in_(["drift", "quality_drop"]),
                                             alerts.c.dedup_key == DAY.isoformat()))  # fmt: skip
    monkeypatch.setenv("NIGHTSHIFT_MONITOR_MAX_WEIGHTED_DRIFT", "-1")  # the day's drift alerts
    monkeypatch.setenv("NIGHTSHIFT_MONITOR_PERSIST_DAYS", "1")  # and one drifted day asks for retraining
    sends = []

    def send_failing_once(url: str, alert: Alert, at: dt.datetime | None = None) -> int | None:
        sends.append(alert.kind)
        if len(sends) == 1:
            raise ConnectionError("the worker lost its network after recording the request")
        return send(url, alert, at)

    monkeypatch.setattr(steps, "send", send_failing_once)

    def delivered() -> tuple[int, int]:  # the fixture's run may have alerted on the day already
        title = f"Data drift on {DAY} "
        return (sum(title in m["subject"] for m in alert_receivers["mails"]),
                sum(title in p["json"]["text"] for p in alert_receivers["posts"]))  # fmt: skip

    delivered_before = delivered()
    dag = dagbag.get_dag("nightshift_monitor")
    monkeypatch.setattr(dag.get_task("judge"), "retry_delay", dt.timedelta(seconds=1))
    run = dag.test(run_conf={"start_date": DAY.isoformat(), "end_date": None})
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    assert run.state == "success", {t: str(ti.state) for t, ti in tis.items()}
    assert tis["judge"].try_number == 2
    assert str(tis["request_retraining"].state) == "success"
    with create_session() as session:
        events = session.scalars(
            sa.select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == "retrain_requested", AssetEvent.source_run_id == run.run_id)
        ).all()  # fmt: skip
        extras = [event.extra for event in events]
    assert [(e["day"], e["reason"]) for e in extras] == [(DAY.isoformat(), f"drift persisted 1 days up to {DAY}")]
    with db.engine(db_url).connect() as conn:
        requests = conn.execute(sa.select(retrain_requests)).mappings().all()
    assert [(r["partition_date"], r["run_id"]) for r in requests] == [(DAY, run.run_id)]
    assert requests[0]["emitted_at"] is not None  # marked once Airflow had the event
    (row,) = [r for r in _alerts(db_url, "drift") if r["run_id"] == run.run_id]  # the day's alert, once
    assert row["delivered_at"] is not None
    assert tuple(n - b for n, b in zip(delivered(), delivered_before, strict=True)) == (1, 1)

    # A second run the same night finds the request emitted: no second event, no second request.
    again = dag.test(run_conf={"start_date": DAY.isoformat(), "end_date": None})
    assert str(again.get_task_instance("request_retraining").state) == "skipped"
    with db.engine(db_url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(retrain_requests)).scalar_one() == 1


def test_a_triggered_run_monitors_only_what_the_serving_version_has_not_seen(stable_model, db_url) -> None:
    """The first night after `make demo` consumes the bootstrap's features events too: it must monitor
    that night, not the days the serving version was trained and tested on, nor days another run
    already reported at that version. A retry of the run that reported a day keeps it."""
    from include.monitor.steps import not_yet_monitored
    from include.train.registry import production_version

    serving = production_version(db_url)
    assert serving is not None
    end = dt.date.fromisoformat(serving["data_window"]["end"])
    fresh, reported = end + dt.timedelta(days=40), end + dt.timedelta(days=41)
    row = {"partition_date": reported, "metric": "drift_share", "feature": "", "value": 0.1, "threshold": 0.3,
           "crossed": False, "model_version": serving["version"], "rows": 900, "report_uri": "file:///r.html",
           "run_id": "an-earlier-run", "computed_at": dt.datetime.now(dt.UTC)}  # fmt: skip
    with db.engine(db_url).begin() as conn:
        db.upsert(conn, drift_reports, [row])
    try:
        days = [end - dt.timedelta(days=1), end, fresh, reported]
        assert not_yet_monitored(db_url, days, "tonight") == [fresh]
        assert not_yet_monitored(db_url, days, "an-earlier-run") == [fresh, reported]
        # Ingested again with corrected data, validated after that report: monitored again.
        revalidated = {"suite": "flights_clean", "partition_date": reported, "run_id": "a-later-ingest",
                       "success": True, "evaluated": 10, "critical_failed": 0, "warning_failed": 0, "failures": [],
                       "result_uri": "file:///v.json",
                       "validated_at": row["computed_at"] + dt.timedelta(hours=1)}  # fmt: skip
        with db.engine(db_url).begin() as conn:
            db.upsert(conn, db.validation_results, [revalidated])
        assert not_yet_monitored(db_url, days, "tonight") == [fresh, reported]
        with db.engine(db_url).begin() as conn:  # reported at another version: new to this one
            conn.execute(sa.delete(db.validation_results).where(db.validation_results.c.run_id == "a-later-ingest"))
            conn.execute(sa.update(drift_reports).where(drift_reports.c.partition_date == reported)
                         .values(model_version=serving["version"] + 1000))  # fmt: skip
        assert not_yet_monitored(db_url, days, "tonight") == [fresh, reported]
    finally:
        with db.engine(db_url).begin() as conn:
            conn.execute(sa.delete(drift_reports).where(drift_reports.c.partition_date == reported))
            conn.execute(sa.delete(db.validation_results).where(db.validation_results.c.run_id == "a-later-ingest"))
