"""Serving replicas in the configuration and the client: the list, `dns:` names, balancing and failover.

The client's HTTP goes through httpx's MockTransport here, which answers as each replica would;
tests/integration/test_serving_replicas.py runs two real serving processes.
"""

from __future__ import annotations

import re
import socket
import time

import httpx
import pytest

from include.core.config import ConfigError, load_settings
from include.serving.client import ServingClient, ServingError, resolve_replicas

A, B, C = "http://127.0.0.1:8601", "http://127.0.0.1:8602", "http://127.0.0.1:8603"
STATUS = {"model_version_status": [{"version": "3", "state": "AVAILABLE", "status": {"error_code": "OK"}}]}


def test_replicas_come_from_one_setting_and_default_to_the_serving_url() -> None:
    assert load_settings({}).replica_urls == ("http://127.0.0.1:8501",)
    settings = load_settings({"NIGHTSHIFT_SERVING_REPLICAS": f" {A}/, {B} "})
    assert settings.serving_replicas == (A, B)
    assert settings.replica_urls == (A, B)
    dns = "dns:http://tf-serving-replicas.nightshift.svc.cluster.local:8501"
    assert load_settings({"NIGHTSHIFT_SERVING_REPLICAS": dns}).replica_urls == (dns,)


@pytest.mark.parametrize(
    ("value", "says"),
    [("127.0.0.1:8501", "is not an http(s)://host:port URL"), (f"{A}/v1/models", "is not an http(s)://host:port"),
     ("dns:tf-serving:8501", "is not an http(s)://host:port"), (f"{A},{A}", "names a replica twice")],
)  # fmt: skip
def test_a_replica_that_is_not_a_server_url_is_refused(value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_settings({"NIGHTSHIFT_SERVING_REPLICAS": value})


def test_a_dns_name_becomes_one_replica_per_address_it_resolves_to() -> None:
    addresses = {info[4][0] for info in socket.getaddrinfo("localhost", 8501, type=socket.SOCK_STREAM)}
    expected = sorted(f"http://[{a}]:8501" if ":" in a else f"http://{a}:8501" for a in addresses)
    assert resolve_replicas([A, "dns:http://localhost:8501"]) == [A, *expected]
    assert "http://127.0.0.1:8501" in expected


def test_a_dns_name_that_does_not_resolve_is_a_serving_error() -> None:
    with pytest.raises(ServingError, match="does not resolve"):
        resolve_replicas(["dns:http://no-such-replica.invalid:8501"])


def _client(answer, urls=(A, B), **options) -> tuple[ServingClient, list[str]]:
    """A client over `urls` whose requests `answer(url) -> httpx.Response` (or raise); returns the hosts asked."""
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        url = f"http://{request.url.host}:{request.url.port}"
        asked.append(url)
        return answer(url, request)

    http = httpx.Client(transport=httpx.MockTransport(handle))
    return ServingClient(list(urls), "flight_delay", _http=http, **options), asked


def test_calls_take_the_replicas_in_turn() -> None:
    client, asked = _client(lambda url, request: httpx.Response(200, json=STATUS), urls=(A, B, C))
    for _ in range(6):
        client.status(label="stable")
    assert asked == [A, B, C, A, B, C]


def test_a_replica_that_is_down_costs_a_retry_on_the_next_one_not_an_answer_nor_a_backoff() -> None:
    def answer(url: str, request: httpx.Request) -> httpx.Response:
        if url == A:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"outputs": [[0.25]]})

    client, asked = _client(answer, retries=1, backoff=30.0)  # a sleep would show
    started = time.monotonic()
    assert client.predict_columns({"hour": [7]}, version=3) == [[0.25]]
    assert time.monotonic() - started < 5
    assert asked == [A, B]


def test_a_refusal_is_the_requests_fault_and_is_not_asked_of_the_next_replica() -> None:
    client, asked = _client(lambda url, request: httpx.Response(404, json={"error": "Servable not found"}))
    with pytest.raises(ServingError, match="Servable not found") as err:
        client.status(version=99)
    assert err.value.status == 404
    assert asked == [A]


def test_every_replica_down_fails_after_the_retries_with_backoff_between_rounds() -> None:
    def answer(url: str, request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": f"{url} is busy"})

    client, asked = _client(answer, retries=3, backoff=0.2)
    started = time.monotonic()
    with pytest.raises(ServingError, match="after 4 attempts") as err:
        client.status(label="stable")
    assert err.value.status == 503
    assert asked == [A, B, A, B]
    assert time.monotonic() - started >= 0.2  # one backoff, after the first round of both replicas


def test_each_replica_can_be_asked_on_its_own_over_the_same_connections() -> None:
    client, asked = _client(lambda url, request: httpx.Response(200, json=STATUS))
    replicas = client.replicas()
    assert [r.base_url for r in replicas] == [A, B]
    for replica in replicas:
        replica.status(label="stable")
    assert asked == [A, B]

    owner = ServingClient([A, B], "flight_delay")
    for replica in owner.replicas():
        replica.close()  # a replica's client does not close the connections it shares
    assert not owner.closed
    owner.close()
    assert owner.closed
    single = ServingClient(A, "flight_delay")
    assert single.replicas() == [single]
    single.close()
