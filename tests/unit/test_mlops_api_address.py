"""The ML Ops view calls Airflow's API only at its configured address, as the caller Airflow authenticates."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from include.mlops.app import api_base_url, caller_token


@pytest.mark.parametrize(
    ("base_url", "port", "expected"),
    [
        ("https://airflow.example/", "8080", "https://airflow.example"),
        ("http://127.0.0.1:9999", "8080", "http://127.0.0.1:9999"),
        ("", "8123", "http://127.0.0.1:8123"),
    ],
)
def test_the_api_address_is_the_configured_base_url(monkeypatch, base_url: str, port: str, expected: str) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", base_url)
    monkeypatch.setenv("AIRFLOW__API__PORT", port)
    assert api_base_url() == expected


def _request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": b""})


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Authorization": "Bearer header-token", "Cookie": "_token=cookie-token"}, "header-token"),
        ({"Authorization": "bearer header-token"}, "header-token"),
        ({"Authorization": "Basic dXNlcjpwdw==", "Cookie": "_token=cookie-token"}, "cookie-token"),
        ({"Cookie": "_token=cookie-token"}, "cookie-token"),
        ({}, ""),
    ],
)
def test_the_bearer_header_wins_over_the_token_cookie(headers: dict[str, str], expected: str) -> None:
    assert caller_token(_request(headers)) == expected
