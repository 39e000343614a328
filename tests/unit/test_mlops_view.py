"""The ML Ops view's HTML helpers: links that cannot run script, lake paths that cannot escape, no secrets."""

from __future__ import annotations

import pytest

from include.mlops import views as mlops

LAKE = "file:///srv/lake"


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
    html = mlops.link('/mlops/x?a=1&b="2"', "<b>run</b>", top=True)
    assert html == '<a href="/mlops/x?a=1&amp;b=&quot;2&quot;" data-airflow>&lt;b&gt;run&lt;/b&gt;</a>'
    assert mlops.link("javascript:alert(1)", "x") == "x"


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
    posted = mlops.delivery("posted to https://hooks.slack.com/services/T000/B000/SECRET (200)")
    failed = mlops.delivery("failed: HTTPStatusError: Client error '404' for url 'https://hooks.example/SECRET'")
    assert "SECRET" not in posted + failed
    assert "delivered" in posted
    assert "HTTPStatusError" in failed
    assert "not configured" in mlops.delivery("skipped: no smtp_default connection")


def test_form_values_are_shown_escaped_and_empty_ones_left_out() -> None:
    html = mlops.params_html({"start_date": "2013-01-01", "end_date": None, "note": "<i>x</i>"})
    assert "start_date" in html
    assert "end_date" not in html
    assert "&lt;i&gt;x&lt;/i&gt;" in html
    assert "defaults" in mlops.params_html({"end_date": None})


def test_an_asset_triggered_run_links_the_run_upstream() -> None:
    html = mlops.upstream([{"name": "features", "uri": "x", "source_dag_id": "nightshift_ingest",
                            "source_run_id": "scheduled__2026-11-22", "extra": {}}])  # fmt: skip
    assert "features" in html
    assert 'href="/dags/nightshift_ingest/runs/scheduled__2026-11-22" data-airflow' in html
    assert mlops.upstream([]) == ""
    twice = [{"name": "features", "source_dag_id": "d", "source_run_id": "r", "extra": {"n": n}} for n in (1, 2)]
    assert mlops.upstream(twice).count("features from") == 1
