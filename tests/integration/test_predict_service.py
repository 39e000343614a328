"""The prediction service as a caller meets it, over HTTP, on the real online store and serving: API keys
(401, revocation, 429), input errors (422 naming the field), predictions by flight key with their arm and
version, unknown entities flagged, the traffic split to a real canary, the served-prediction log and the
metrics."""

from __future__ import annotations

import datetime as dt
import shutil
import time

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa

from include import db
from include.contract.features import MODEL_FEATURES
from include.core.config import load_settings
from include.deploy.steps import wait_available, wait_label
from include.predict import keys
from include.predict.parity import callers_flights
from include.predict.served import served_counts, served_frame
from include.serving.client import client_for
from include.serving.state import ServingState, read_state, write_state
from tests.server_fixtures import END

DAY = END  # the last day the session's ingest published


@pytest.fixture(scope="module")
def key(db_url, predict_service) -> str:
    return keys.create_key(db_url, f"test-{time.time_ns()}", 100_000)


@pytest.fixture(scope="module")
def flights(settings) -> list[dict]:
    return list(callers_flights(settings, DAY).values())


def _post(service, key: str | None, flights: list[dict], **headers: str) -> httpx.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{service.url}/v1/predict", json={"flights": flights}, headers=headers, timeout=60)


def test_without_a_key_or_with_a_wrong_one_the_service_answers_401(predict_service, flights):
    for sent in (None, "ns_not-a-key"):
        response = _post(predict_service, sent, flights[:1])
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"


def test_flights_by_key_get_a_probability_from_the_stable_version(predict_service, key, flights):
    response = _post(predict_service, key, flights[:50])
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["request_id"]) == 32
    predictions = body["predictions"]
    assert len(predictions) == 50
    assert {p["arm"] for p in predictions} == {"stable"}
    assert {p["model_version"] for p in predictions} == {predict_service.version}
    assert all(0.0 <= p["p_delayed"] <= 1.0 for p in predictions)
    assert len({round(p["p_delayed"], 6) for p in predictions}) > 10  # the flights' own features, not a constant
    first = flights[0]
    assert predictions[0]["flight_key"] == f"{DAY}/{first['carrier']}/{first['flight']}/{first['origin']}"


def test_the_x_api_key_header_works_too(predict_service, key, flights):
    assert httpx.post(f"{predict_service.url}/v1/predict", json={"flights": flights[:1]},
                      headers={"X-API-Key": key}, timeout=60).status_code == 200  # fmt: skip


@pytest.mark.parametrize(("change", "field"), [
    ({"carrier": "ZZ"}, "carrier"), ({"sched_dep": "tomorrow"}, "sched_dep"), ({"dest": None}, "dest"),
])  # fmt: skip
def test_a_bad_flight_gets_422_naming_the_field(predict_service, key, flights, change, field):
    response = _post(predict_service, key, [flights[0], {**flights[1], **change}])
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "flights", 1, field]]


def test_an_unknown_plane_is_scored_with_missing_values_and_flagged(predict_service, key, flights):
    known, unknown = flights[0], {**flights[0], "tailnum": "N0NE00"}
    got = _post(predict_service, key, [known, unknown]).json()["predictions"]
    assert got[0]["unknown"] == []
    assert got[1]["unknown"] == ["plane N0NE00: plane_attributes_fv"]
    assert got[1]["p_delayed"] is not None
    assert 0 <= got[1]["p_delayed"] <= 1


def test_a_revoked_key_is_refused(db_url, predict_service, flights):
    name = f"revoked-{time.time_ns()}"
    doomed = keys.create_key(db_url, name, 1000)
    assert _post(predict_service, doomed, flights[:1]).status_code == 200
    assert keys.revoke_key(db_url, name)
    time.sleep(0.3)  # the service trusts what it read of keys for 0.2 s
    assert _post(predict_service, doomed, flights[:1]).status_code == 401
    with db.engine(db_url).connect() as conn:
        stored = conn.execute(sa.select(db.api_keys.c.key_sha256).where(db.api_keys.c.name == name)).scalar_one()
    assert stored == keys.digest(doomed)
    assert doomed not in stored


def test_over_its_rate_limit_a_key_gets_429(db_url, predict_service, flights):
    slow = keys.create_key(db_url, f"slow-{time.time_ns()}", 2)  # 2 a minute: one burst token
    codes = [_post(predict_service, slow, flights[:1]).status_code for _ in range(3)]
    assert codes[0] == 200
    assert 429 in codes[1:]
    limited = _post(predict_service, slow, flights[:1])
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1


def _scored(service, key: str, flights: list[dict]) -> list[dict]:
    return [
        p for i in range(0, len(flights), 100) for p in _post(service, key, flights[i : i + 100]).json()["predictions"]
    ]


def test_the_canary_gets_its_share_of_flights_sticky_by_key(predict_service, key, flights):
    """A real second version (the stable SavedModel's bytes under another number) labelled `canary`: with the
    default 10 %, 1,000 distinct flights put 10 % ± 3 % on it, the same flights on every call."""
    settings = load_settings()
    before = read_state(settings)
    canary = max(before.versions) + 1000
    shutil.copytree(settings.model_dir / str(before.stable), settings.model_dir / str(canary))
    many = (flights * 2)[:1000]
    many = [{**f, "flight": 1000 + i} for i, f in enumerate(many)]  # 1,000 distinct flight keys
    try:
        # As the deploy does it: load the version, then label it once it is AVAILABLE.
        write_state(settings, ServingState([*before.versions, canary], before.labels))
        with client_for(settings) as client:
            wait_available(client, canary, 120)
            write_state(settings, ServingState([*before.versions, canary], {**before.labels, "canary": canary}))
            wait_label(client, "canary", canary, 120)
        time.sleep(0.3)
        first = [
            p for i in range(0, 1000, 100) for p in _post(predict_service, key, many[i : i + 100]).json()["predictions"]
        ]
        again = [
            p for i in range(0, 1000, 100) for p in _post(predict_service, key, many[i : i + 100]).json()["predictions"]
        ]
    finally:
        write_state(settings, before)
        time.sleep(0.3)  # the service follows the labels within its 0.2 s; later tests must see no canary
        shutil.rmtree(settings.model_dir / str(canary), ignore_errors=True)
    on_canary = [p for p in first if p["arm"] == "canary"]
    assert 70 <= len(on_canary) <= 130, len(on_canary)
    assert {p["model_version"] for p in on_canary} == {canary}
    assert {p["model_version"] for p in first if p["arm"] == "stable"} == {before.stable}
    assert [p["arm"] for p in first] == [p["arm"] for p in again]
    # The same bytes: the arm changes who answered, not the answer.
    assert max(abs(a["p_delayed"] - b["p_delayed"]) for a, b in zip(first, again, strict=True)) < 1e-6


def test_every_served_prediction_is_logged_in_batches_and_counted(db_url, predict_service, key, flights):
    settings = load_settings()
    log = predict_service.app.state.service.log
    log.flush()  # what earlier tests served
    since = dt.datetime.now(dt.UTC)
    before = sum(r["rows"] for r in served_counts(db_url, DAY))
    response = _post(predict_service, key, flights[:120])
    for i in range(0, 120, 40):
        _post(predict_service, key, flights[i : i + 40])
    assert response.status_code == 200
    log.flush()
    counts = served_counts(db_url, DAY)
    assert sum(r["rows"] for r in counts) - before == 240
    logged = served_frame(settings, since=since)
    mine = logged[logged["request_id"] == response.json()["request_id"]]
    assert len(mine) == 120
    assert set(MODEL_FEATURES) <= set(mine.columns)
    assert {"flight_key", "model_version", "arm", "p_delayed", "latency_ms", "serving_ms"} <= set(mine.columns)
    by_key = {p["flight_key"]: p["p_delayed"] for p in response.json()["predictions"]}
    assert mine["p_delayed"].to_numpy() == pytest.approx([by_key[k] for k in mine["flight_key"]])
    assert (mine["latency_ms"] > 0).all()
    with db.engine(db_url).connect() as conn:
        files = conn.execute(sa.select(sa.func.count()).select_from(db.served_batches)
                             .where(db.served_batches.c.written_at >= since)).scalar_one()  # fmt: skip
    assert files <= 4  # batched per flush, never one file per request (4 requests)
    assert pd.Timestamp(mine["served_at"].min()) >= pd.Timestamp(since)


def test_concurrent_requests_each_get_their_own_flights_answered_as_if_alone(predict_service, key, flights):
    """The service scores requests that arrive together in one batch (`include/predict/batching.py`): each
    must still get its own flights, in its order, with what they get alone, and be logged under its id."""
    from concurrent.futures import ThreadPoolExecutor

    settings = load_settings()
    log = predict_service.app.state.service.log
    log.flush()
    since = dt.datetime.now(dt.UTC)
    asked = [flights[i * 7 : i * 7 + 1 + i % 5] for i in range(32)]  # 1 to 5 flights each, none shared
    alone = [_post(predict_service, key, f).json()["predictions"] for f in asked]
    batcher = predict_service.app.state.service.batcher
    before = (batcher.batches, batcher.items)
    score = batcher.run

    def slow(items: list) -> list:  # a batch takes 50 ms: the 16 senders' requests must then share batches
        time.sleep(0.05)
        return score(items)

    batcher.run = slow
    try:
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(lambda f: _post(predict_service, key, f), asked))
    finally:
        batcher.run = score
    batches, shared = batcher.batches - before[0], batcher.items - before[1]
    assert shared == 32
    assert batches < 32  # some requests were scored together
    for sent, got, reference in zip(asked, together, alone, strict=True):
        assert got.status_code == 200, got.text
        predictions = got.json()["predictions"]
        assert [p["flight_key"] for p in predictions] == [p["flight_key"] for p in reference]
        assert len(predictions) == len(sent)
        assert max(abs(p["p_delayed"] - r["p_delayed"]) for p, r in zip(predictions, reference, strict=True)) < 1e-6
    log.flush()
    logged = served_frame(settings, since=since)
    for got in together:
        body = got.json()
        mine = logged[logged["request_id"] == body["request_id"]]
        assert sorted(mine["flight_key"]) == sorted(p["flight_key"] for p in body["predictions"])
    text = httpx.get(f"{predict_service.url}/metrics", timeout=10).text
    names = ("nightshift_predict_batches_total ", "nightshift_predict_batched_requests_total ")
    counted = {name: float(value) for name, value in (line.split() for line in text.splitlines()
               if line.startswith(names))}  # fmt: skip
    assert counted == {"nightshift_predict_batches_total": batcher.batches,
                       "nightshift_predict_batched_requests_total": batcher.items}  # fmt: skip


def test_a_day_the_service_answered_only_in_part_is_monitored_whole_offline(settings, predict_service, key, flights):
    from include.core.config import MonitorPolicy
    from include.monitor.steps import score_day

    _post(predict_service, key, flights[:250])
    predict_service.app.state.service.log.flush()
    scored = score_day(settings, MonitorPolicy.from_env(), DAY, "manual__partly-served")
    assert scored["source"] == "offline"  # 250 of the day's flights are not the day
    assert scored["rows"] > 700


def test_metrics_count_flights_by_arm_and_version(predict_service, key, flights):
    _post(predict_service, key, flights[:3])
    text = httpx.get(f"{predict_service.url}/metrics", timeout=10).text
    assert f'nightshift_predict_flights_total{{arm="stable",version="{predict_service.version}"}}' in text
    assert 'nightshift_predict_requests_total{code="401"}' in text
    assert "nightshift_predict_latency_seconds_bucket" in text


def test_ready_when_serving_has_the_stable_version(predict_service):
    ready = httpx.get(f"{predict_service.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["versions"]["stable"] == predict_service.version


def test_batch_prediction_scores_tomorrows_scheduled_flights_with_stable(dagbag, settings, stable_model, serving):
    from include.core import lake
    from include.predict.batch import output_file

    with db.engine(load_settings().require_database_url()).connect() as conn:
        latest = conn.execute(sa.select(sa.func.max(db.partitions.c.partition_date))).scalar_one()
    tomorrow = latest + dt.timedelta(days=1)  # not ingested: its flights have not flown
    run = dagbag.get_dag("nightshift_predict_batch").test(run_conf={})
    assert run.state == "success"
    out = lake.read_parquet(output_file(lake.lake_root(settings), tomorrow))
    assert len(out) > 800
    assert set(out["model_version"]) == {stable_model}
    assert out["p_delayed"].between(0, 1).all()
    assert not {"arr_delay", "dep_delay", "is_delayed", "dep_time"} & set(out.columns)


def test_batch_prediction_reads_a_landing_file_by_name_only(dagbag, settings, stable_model, serving):
    from include.core import lake
    from include.ingest.collect import replay_flights
    from include.predict.batch import output_file

    root = lake.lake_root(settings)
    day = dt.date(2013, 8, 5)
    drop = root / "landing" / "scheduled" / "ops-2013-08-05.csv"
    drop.parent.mkdir(parents=True, exist_ok=True)
    drop.write_text(replay_flights(day).drop(columns=["arr_delay", "dep_delay"]).head(40).to_csv(index=False))
    dag = dagbag.get_dag("nightshift_predict_batch")
    assert dag.test(run_conf={"date": day.isoformat(), "landing_file": drop.name}).state == "success"
    assert len(lake.read_parquet(output_file(root, day))) == 40
    for bad in ("../../clean/flights/date=2013-07-01/part-0.parquet", "/etc/passwd", "missing.csv"):
        run = dag.test(run_conf={"date": day.isoformat(), "landing_file": bad})
        assert run.state == "failed", bad


def test_serving_down_opens_one_incident_with_one_alert_and_the_recovery_is_noted(db_url, predict_service, key,
                                                                                   flights, refused_url):  # fmt: skip
    import dataclasses

    from include.core.config import ServingHealth
    from include.predict.health import check

    settings, policy = load_settings(), ServingHealth()
    since = dt.datetime.now(dt.UTC)
    _post(predict_service, key, flights[:30])
    predict_service.app.state.service.log.flush()
    down = dataclasses.replace(settings, serving_url=refused_url)
    first, again = check(down, policy, "manual__health-1"), check(down, policy, "manual__health-2")
    assert first["opened"] == ["serving_down"]
    assert again["opened"] == []
    assert first["state"].startswith("unreachable")
    stable = [a for a in first["arms"] if a["arm"] == "stable"]  # (the canary test's traffic is in the window too)
    assert sum(a["requests"] for a in stable) >= 30
    assert all(a["p99_ms"] > 0 for a in stable)
    with db.engine(db_url).connect() as conn:
        raised = conn.execute(sa.select(db.alerts.c.id, db.alerts.c.severity).where(
            db.alerts.c.kind == "serving_down", db.alerts.c.created_at >= since)).all()  # fmt: skip
    assert len(raised) == 1
    assert raised[0].severity == "critical"
    healthy = check(settings, policy, "manual__health-3")
    assert healthy["closed"] == ["serving_down"]
    assert healthy["state"] == "AVAILABLE"
    with db.engine(db_url).connect() as conn:
        message = conn.execute(sa.select(db.alerts.c.message).where(db.alerts.c.id == raised[0].id)).scalar_one()
        checks = conn.execute(sa.select(db.serving_health.c.state).where(
            db.serving_health.c.arm == "probe", db.serving_health.c.checked_at >= since)).scalars().all()  # fmt: skip
    assert "Recovered at" in message
    assert len(checks) == 3
    assert checks.count("AVAILABLE") == 1


def test_a_body_over_the_limit_is_refused_before_it_is_read(predict_service, key):
    huge = b'{"flights": [' + b" " * 2_000_000 + b"]}"
    declared = httpx.post(f"{predict_service.url}/v1/predict", content=huge, timeout=30,
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})  # fmt: skip
    assert declared.status_code == 413

    def chunks():
        yield b'{"flights": ['
        for _ in range(40):
            yield b" " * 65_536

    streamed = httpx.post(f"{predict_service.url}/v1/predict", content=chunks(), timeout=30,
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})  # fmt: skip
    assert streamed.status_code == 413
    assert httpx.get(f"{predict_service.url}/healthz", timeout=10).status_code == 200  # and it still serves


def test_the_service_listens_on_loopback_unless_told_otherwise():
    from include.core.config import PredictService

    assert PredictService().host == "127.0.0.1"
    assert PredictService.from_env({"NIGHTSHIFT_PREDICT_HOST": "0.0.0.0"}).host == "0.0.0.0"


def test_serving_down_is_a_503_that_tells_the_caller_nothing_of_serving(key, flights, refused_url, predict_service):
    import dataclasses

    from include.core.config import PredictService
    from include.predict.app import running

    settings = dataclasses.replace(load_settings(), serving_url=refused_url)
    with running(settings, PredictService(state_ttl_s=0.2, serving_timeout_s=1.0)) as (url, _):
        response = httpx.post(f"{url}/v1/predict", json={"flights": flights[:2]}, timeout=30,
                              headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    assert response.status_code == 503
    assert "serving failed for this request" in response.json()["detail"]
    assert refused_url.removeprefix("http://") not in response.text
