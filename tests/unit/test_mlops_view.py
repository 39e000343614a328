"""The ML Ops view's pages: links that cannot run script, lake paths that cannot escape, no secrets, and
every value escaped by the real templates."""

from __future__ import annotations

import datetime as dt

import pytest

from include.mlops import views as mlops
from include.serving.state import ServingState

LAKE = "file:///srv/lake"
AT = dt.datetime(2013, 4, 2, 6, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("/dags/x/runs/y", "/dags/x/runs/y"),
        ("https://airflow.example/dags/x", "https://airflow.example/dags/x"),
        ("javascript:alert(1)", None),
        (" javascript:alert(1)", None),
        ("data:text/html,<script>", None),
        ("//evil.example/x", None),
        ("file:///etc/passwd", None),
        ("", None),
        (None, None),
    ],
)
def test_only_relative_and_http_links_are_links(href: str | None, expected: str | None) -> None:
    assert mlops.safe_href(href) == expected


def test_a_link_escapes_its_text_and_target() -> None:
    html = mlops.macros().link('/mlops/x?a=1&b="2"', "<b>run</b>", top=True)
    assert html == '<a href="/mlops/x?a=1&amp;b=&#34;2&#34;" data-airflow>&lt;b&gt;run&lt;/b&gt;</a>'
    assert mlops.macros().link("javascript:alert(1)", "x") == "x"


@pytest.mark.parametrize(
    ("relative", "ok"),
    [
        ("reports/drift/date=2013-04-01/index.html", True),
        ("reports/data_docs/run/index.html", True),
        ("datasets/manual__1/manifest.json", True),
        ("datasets/manual__1/train.parquet", False),
        ("raw/flights/date=2013-01-01/part-0.parquet", False),
        ("reports/../raw/flights/part-0.parquet", False),
        ("reports/.staging/x.html", False),
        ("reports//x.html", False),
        ("", False),
    ],
)
def test_only_reports_and_manifests_are_served(relative: str, ok: bool) -> None:
    assert mlops.servable(relative) is ok


def test_lake_uris_map_to_the_views_file_route() -> None:
    assert mlops.file_href(f"{LAKE}/reports/drift/date=2013-04-01/index.html", LAKE) == (
        "/mlops/files/reports/drift/date%3D2013-04-01/index.html"
    )
    assert mlops.file_href("file:///srv/lake-other/reports/x.html", LAKE) is None
    assert mlops.file_href(f"{LAKE}/raw/flights/x.parquet", LAKE) is None
    assert mlops.href_for(f"{LAKE}/reports/x.html", LAKE) == ("/mlops/files/reports/x.html", False)
    assert mlops.href_for("http://localhost:8080/dags/d/runs/r", LAKE) == ("http://localhost:8080/dags/d/runs/r", True)


def test_a_delivery_result_never_shows_the_webhook_url_or_server_reply() -> None:
    delivery = mlops.macros().delivery
    posted = delivery("posted to https://hooks.slack.com/services/T000/B000/SECRET (200)")
    failed = delivery("failed: HTTPStatusError: Client error '404' for url 'https://hooks.example/SECRET'")
    assert "SECRET" not in posted + failed
    assert "delivered" in posted
    assert "HTTPStatusError" in failed
    assert "not configured" in delivery("skipped: no smtp_default connection")


def test_form_values_are_shown_escaped_and_empty_ones_left_out() -> None:
    params = mlops.macros().params
    html = params({"start_date": "2013-01-01", "end_date": None, "note": "<i>x</i>"})
    assert "start_date" in html
    assert "end_date" not in html
    assert "&lt;i&gt;x&lt;/i&gt;" in html
    assert "defaults" in params({"end_date": None})


def test_an_asset_triggered_run_links_the_run_upstream() -> None:
    upstream = mlops.macros().upstream
    html = upstream([{"name": "features", "uri": "x", "source_dag_id": "nightshift_ingest",
                            "source_run_id": "scheduled__2026-11-22", "extra": {}}])  # fmt: skip
    assert "features" in html
    assert 'href="/dags/nightshift_ingest/runs/scheduled__2026-11-22" data-airflow' in html
    assert upstream([]) == ""
    twice = [{"name": "features", "source_dag_id": "d", "source_run_id": "r", "extra": {"n": n}} for n in (1, 2)]
    assert upstream(twice).count("features from") == 1


HOSTILE = "<script>alert(1)</script>"


def _version(**changes: object) -> dict[str, object]:
    return {
        "version": 7, "status": "blessed", "dag_id": "nightshift_train", "run_id": "manual__<b>",
        "code_version": "abc", "artifact_uri": f"{LAKE}/models/7",
        "report_uri": f"{LAKE}/reports/evaluation/7/index.html",
        "dataset_uri": f"{LAKE}/datasets/manual__1/", "dataset_sha256": "f00", "data_window": {"train": "2013-01"},
        "feature_service": "flights_v1", "feast_registry_version": "3", "ingestion_run_ids": ["manual__1"],
        "validation_run_ids": ["manual__1"], "metrics": {"auc": 0.8, "<i>m</i>": 1.0}, "hyperparameters": {"lr": 0.1},
        "params": {"note": HOSTILE}, "gate_note": HOSTILE, "created_at": AT, **changes,
    }  # fmt: skip


def test_a_version_page_escapes_every_value_and_links_only_safe_targets() -> None:
    check = {"name": "auc", "kind": "metric", "passed": False, "observed": 0.5, "threshold": 0.7,
             "detail": "<img src=x onerror=alert(2)>"}  # fmt: skip
    deployed = {"created_at": AT, "version": 7, "action": "promote", "succeeded": True, "stable_version": 7,
                "canary_version": None, "reason": HOSTILE, "dag_id": "nightshift_deploy", "run_id": "r"}  # fmt: skip
    page = mlops.version_page(_version(), [check], [deployed], ServingState([7], {"stable": 7}), LAKE)
    assert "<script>alert(1)" not in page
    assert "<img src=x" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 3  # the gate note, a form value, a reason
    assert "&lt;i&gt;m&lt;/i&gt;" in page
    assert 'href="/dags/nightshift_train/runs/manual__%3Cb%3E" data-airflow' in page
    assert 'href="/mlops/files/reports/evaluation/7/index.html">ROC / PR' in page
    assert 'href="/mlops/files/datasets/manual__1/manifest.json">manifest' in page
    assert 'href="/mlops/files/reports/model_card/7/index.html">model card' in page
    assert 'href="/mlops/files/reports/model_card/7/model_card.md">Markdown' in page

    elsewhere = mlops.version_page(_version(report_uri="javascript:alert(3)", dataset_uri="file:///etc/"), [], [],
                                   ServingState(), LAKE)  # fmt: skip
    assert "javascript:" not in elsewhere
    assert ">manifest</a>" not in elsewhere  # shown as text, not as a link
    assert "/etc/manifest.json" not in elsewhere


def test_a_version_page_lists_its_top_inputs_in_order_and_says_when_none_were_measured() -> None:
    top = [{"feature": "sched_dep_hour", "auc_drop": 0.038, "ci_low": 0.035, "ci_high": 0.041},
           {"feature": HOSTILE, "auc_drop": 0.02, "ci_low": 0.01, "ci_high": 0.03}]  # fmt: skip
    metrics = {"auc": 0.7, "ensemble_method": "stacking", "calibration": "platt", "importance": top}
    page = mlops.version_page(_version(metrics=metrics), [], [], ServingState(), LAKE)
    assert "<h2>Top inputs</h2>" in page
    assert page.index("<code>sched_dep_hour</code>") < page.index("<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>")
    assert '<span class="num">0.0350</span> … <span class="num">0.0410</span>' in page
    assert "stacking · platt" in page
    older = mlops.version_page(_version(), [], [], ServingState(), LAKE)  # registered before importance existed
    assert "Not measured for this version." in older
    assert "averaging · none" in older


def test_an_alert_page_escapes_the_title_and_does_not_link_javascript() -> None:
    alert = {"id": 1, "created_at": AT, "severity": "critical", "kind": "drift", "dedup_key": '"><b>k',
             "title": HOSTILE, "message": "<img src=x onerror=alert(2)>", "link": "javascript:alert(3)",
             "dag_id": "nightshift_monitor", "task_id": "judge", "run_id": "r",
             "deliveries": {"webhook": "posted to https://hooks.example/SECRET (200)"}}  # fmt: skip
    page = mlops.alert_page(alert, LAKE)
    assert "<title>&lt;script&gt;alert(1)&lt;/script&gt; · nightshift ML Ops</title>" in page
    assert "<h1>&lt;script&gt;alert(1)&lt;/script&gt;</h1>" in page
    assert "<script>alert" not in page
    assert "<img src=x" not in page
    assert 'href="javascript' not in page
    assert "<td>javascript:alert(3)</td>" in page  # shown, not linked
    assert "&#34;&gt;&lt;b&gt;k" in page
    assert "SECRET" not in page
    lake_alert = mlops.alert_page({**alert, "link": f"{LAKE}/reports/drift/date=2013-04-01/index.html"}, LAKE)
    assert '<a href="/mlops/files/reports/drift/date%3D2013-04-01/index.html">open</a>' in lake_alert
    ui_alert = mlops.alert_page({**alert, "link": "http://localhost:8080/dags/d"}, LAKE)
    assert '<a href="http://localhost:8080/dags/d" data-airflow>open</a>' in ui_alert


def test_the_alerts_filter_escapes_what_the_request_sent() -> None:
    row = {"id": 3, "created_at": AT, "severity": "info", "kind": "k", "title": HOSTILE, "dag_id": None,
           "task_id": None, "run_id": None}  # fmt: skip
    page = mlops.alerts_page([row], ["critical", "warning", "info"], ['x"><script>'], "info", None, '"><script>')
    assert "<script>alert" not in page
    assert '<input type="hidden" name="run_id" value="&#34;&gt;&lt;script&gt;">' in page
    assert '<option value="x&#34;&gt;&lt;script&gt;">' in page
    assert '<option value="info" selected>' in page
    assert '<a href="/mlops/alerts/3">&lt;script&gt;alert(1)&lt;/script&gt;</a>' in page


def test_the_drift_page_shows_the_day_s_retraining_request() -> None:
    day = {"day": dt.date(2013, 4, 2), "drift_share": 0.5, "auc": 0.7, "crossed": True, "drifted": ["temp"],
           "report": "x", "model_version": 2, "rows": 900}  # fmt: skip
    page = mlops.drift_page([{**day, "retrain_reason": "drift persisted 3 days <b>"},
                             {**day, "day": dt.date(2013, 4, 1), "retrain_reason": None}])  # fmt: skip
    assert "<th>retraining requested</th>" in page
    assert "<td>drift persisted 3 days &lt;b&gt;</td>" in page
    assert page.count("<td></td>") == 1  # the day without a request
    assert 'aria-label="drift share and ROC-AUC by day"' in page


@pytest.mark.parametrize(("state", "follows"), [("running", True), (None, True), ("success", False), ("failed", False)])
def test_the_deployments_page_follows_the_requested_run_until_it_ends(state: str | None, follows: bool) -> None:
    run = {"conf": {"action": "rollback"}, "state": state, "triggering_user_name": "oncall",
           "dag_id": "nightshift_deploy", "dag_run_id": "manual__2013"}  # fmt: skip
    page = mlops.deployments_page("flight_delay", ServingState([1, 2], {"stable": 2}), True, [1], [], run)
    assert ('<div class="actions">Rollback requested as oncall: <a href="/dags/nightshift_deploy/runs/manual__2013" '
            'data-airflow class="run">manual__2013</a> <span class="badge ') in page  # fmt: skip
    assert f">{state or 'queued'}</span>." in page
    assert ("<meta http-equiv=refresh content=3>" in page) is follows
    assert ("The page refreshes until the run ends." in page) is follows
    assert "Roll back stable…" in page
    assert "Read-only" not in mlops.deployments_page("m", ServingState(), True, [], [])
    assert "Read-only" in mlops.deployments_page("m", ServingState(), False, [], [])


def test_a_rollback_is_confirmed_only_when_there_is_a_version_to_go_back_to() -> None:
    ready = mlops.confirm_page("rollback", None, "flight_delay", ServingState([1, 2], {"stable": 2}), 1)
    assert "<h1>Roll back flight_delay?</h1>" in ready
    assert "moves from v2 back to <b>v1</b>, the version it replaced" in ready
    assert '<input type="hidden" name="action" value="rollback"><button class="danger"' in ready
    nothing = mlops.confirm_page("rollback", None, "flight_delay", ServingState([2], {"stable": 2}), None)
    assert "There is nothing to roll back to" in nothing
    assert "<form" not in nothing
    promote = mlops.confirm_page("promote", 3, "flight_delay", ServingState([2], {"stable": 2}), None)
    assert "<b>v3</b> is pushed" in promote
    assert '<input type="hidden" name="version" value="3">' in promote


def test_the_predictions_page_shows_the_split_traffic_and_downloads_escaped() -> None:
    served = [{"day": dt.date(2013, 7, 30), "model_version": 3, "arm": "<b>canary</b>", "rows": 1200, "errors": 4,
               "files": 2, "last_written": dt.datetime(2026, 12, 2, 18, 0, tzinfo=dt.UTC)}]  # fmt: skip
    page = mlops.predictions_page(served, ServingState([2, 3], {"stable": 2, "canary": 3}), 25.0, ["2013-07-31"])
    assert "gets 25% of flights" in page
    assert "&lt;b&gt;canary&lt;/b&gt;" in page
    assert "<b>canary</b>" not in page
    assert "predictions/scheduled.csv?day=2013-07-31" in page
    alone = mlops.predictions_page([], ServingState([2], {"stable": 2}), None, [])
    assert "no canary: every flight goes to stable" in alone


def test_the_predictions_page_charts_the_health_checks_and_marks_serving_down() -> None:
    at = [dt.datetime(2026, 12, 2, 18, m, tzinfo=dt.UTC) for m in (0, 5, 10)]
    states = ["AVAILABLE", "unreachable: refused", "AVAILABLE"]
    health = [
        *({"checked_at": t, "arm": "probe", "model_version": 2, "requests": 0, "errors": 0, "p50_ms": None,
           "p99_ms": None, "state": s} for t, s in zip(at, states, strict=True)),
        *({"checked_at": t, "arm": "stable", "model_version": 2, "requests": 300, "errors": e, "p50_ms": 5.0,
           "p99_ms": p, "state": "served"} for t, e, p in zip(at, [0, 12, 0], [9.0, 30.0, 8.0], strict=True)),
    ]  # fmt: skip
    page = mlops.predictions_page([], ServingState([2], {"stable": 2}), None, [], health)
    assert page.count("<title>serving down</title>") == 1
    assert "p99 30.0 ms, 300 flights, 12 errors" in page
    assert "30 ms</text>" in page  # the axis tops at the slowest p99
    assert mlops.health_chart(health[:1]) is None
