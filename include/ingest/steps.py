"""The ingest pipeline's steps over a list of days: what each task of `nightshift_ingest` does.

Each step is idempotent and keyed on the day: it replaces the day's partitions and upserts the
day's rows in Postgres, so a retry or a re-run of the same range gives the same result.
Each returns a small JSON-able summary for XCom; data stays in the lake.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from include.core import lake
from include.core.assets import INGEST_DAG
from include.core.calendar import end_of_day_utc, local_midnight_utc
from include.core.config import LandingLimits, Settings
from include.ingest import records
from include.ingest.clean import clean_flights, clean_weather, daily_delay_stats, history_window
from include.ingest.collect import collect_day

log = logging.getLogger(__name__)


def _progress(step: str, index: int, days: list[dt.date], started: float) -> None:
    if index == len(days) or index % 10 == 0:
        log.info("%s: %d/%d days (%s), %.1f s", step, index, len(days), days[index - 1], time.monotonic() - started)


def collect(settings: Settings, days: list[dt.date], run_id: str, now: dt.datetime) -> dict[str, Any]:
    url = settings.require_database_url()
    root = lake.lake_root(settings)
    limits = LandingLimits.from_env()
    started, rows = time.monotonic(), 0
    for index, day in enumerate(days, start=1):
        got = collect_day(root, settings.source, day, limits)  # a bad landing file: LandingFileError, no retry
        records.record_partition(url, "raw/flights", day, got.flights_uri, got.rows_raw, got.flights_sha256, run_id,
                                 now)  # fmt: skip
        records.record_partition(url, "raw/weather", day, got.weather_uri, got.weather_rows, got.weather_sha256,
                                 run_id, now)  # fmt: skip
        records.record_ingestion(url, {
            "run_id": run_id, "partition_date": day, "dag_id": INGEST_DAG, "source": settings.source,
            "rows_raw": got.rows_raw, "rows_clean": None, "rows_quarantined": None,
            "status": "collected", "updated_at": now,
        })  # fmt: skip
        rows += got.rows_raw
        _progress("collect", index, days, started)
    return {"days": len(days), "rows_raw": rows, "source": settings.source}


def clean(settings: Settings, days: list[dt.date], run_id: str, now: dt.datetime) -> dict[str, Any]:
    """Clean each day in order, so a day's history features see the days just cleaned before it."""
    url = settings.require_database_url()
    root = lake.lake_root(settings)
    started = time.monotonic()
    totals = {"rows_raw": 0, "rows_clean": 0, "rows_quarantined": 0}
    reasons: dict[str, int] = {}
    for index, day in enumerate(days, start=1):
        raw = lake.read_parquet(lake.partition_file(root, "raw", "flights", day))
        earlier = lake.read_partitions(root, "clean", "delay_stats", history_window(day))
        result = clean_flights(raw, day, earlier)
        outputs = {
            "clean/flights": (lake.partition_file(root, "clean", "flights", day), result.clean),
            "clean/delay_stats": (
                lake.partition_file(root, "clean", "delay_stats", day),
                daily_delay_stats(result.clean, day),
            ),
            "quarantine/flights": (lake.partition_file(root, "quarantine", "flights", day), result.quarantine),
            "clean/weather": (
                lake.partition_file(root, "clean", "weather", day),
                clean_weather(lake.read_parquet(lake.partition_file(root, "raw", "weather", day))),
            ),
        }
        for dataset, (path, frame) in outputs.items():
            sha = lake.write_parquet(path, frame)
            records.record_partition(url, dataset, day, lake.uri(path), len(frame), sha, run_id, now)
        records.replace_quarantine_counts(url, day, result.reasons, run_id)
        records.record_ingestion(url, {
            "run_id": run_id, "partition_date": day, "dag_id": INGEST_DAG, "source": settings.source,
            "rows_raw": len(raw), "rows_clean": len(result.clean),
            "rows_quarantined": len(result.quarantine), "status": "cleaned", "updated_at": now,
        })  # fmt: skip
        totals["rows_raw"] += len(raw)
        totals["rows_clean"] += len(result.clean)
        totals["rows_quarantined"] += len(result.quarantine)
        for reason, count in result.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
        _progress("clean", index, days, started)
    return {"days": len(days), **totals, "quarantine_reasons": reasons}


def row_count_bounds(url: str, day: dt.date, tolerance: float) -> tuple[int, int]:
    """Bounds on a day's clean rows from the mean of the recorded days before it."""
    recent = records.partition_rows(url, "clean/flights", history_window(day))
    if not recent:
        return 1, 5000
    mean = sum(recent.values()) / len(recent)
    return max(1, int(mean * (1 - tolerance))), int(mean * (1 + tolerance)) + 1


def validate(settings: Settings, days: list[dt.date], run_id: str, now: dt.datetime) -> dict[str, Any]:
    """Validate every day, record every result, then fail if any critical expectation failed."""
    from include.ingest.validate import SUITES, DayValidator, ValidationFailed

    url = settings.require_database_url()
    root = lake.lake_root(settings)
    validator = DayValidator()
    started = time.monotonic()
    outcomes = []
    for index, day in enumerate(days, start=1):
        low, high = row_count_bounds(url, day, settings.row_count_tolerance)
        parameters = {
            "min_rows": low,
            "max_rows": high,
            "day_start_utc": local_midnight_utc(day),
            "day_end_utc": end_of_day_utc(day),
        }
        for suite, dataset in SUITES.items():
            frame = lake.read_parquet(lake.partition_file(root, "clean", dataset, day))
            outcome, raw_result = validator.run(suite, frame, day, parameters)
            result_path = root / "reports" / "validation" / suite / f"date={day.isoformat()}" / "result.json"
            lake.write_atomic(result_path, _json_bytes(raw_result))
            outcome.result_uri = lake.uri(result_path)
            outcomes.append(outcome)
        _progress("validate", index, days, started)
    docs_root = root / "reports" / "data_docs" / lake.safe_name(run_id)
    pages = validator.publish_docs(docs_root)
    for outcome in outcomes:
        outcome.docs_uri = next(
            (uri for page, uri in pages.items() if f"/{outcome.suite}/date={outcome.day.isoformat()}/" in f"/{page}"),
            pages.get("index.html"),
        )
        records.record_validation(url, {
            "suite": outcome.suite, "partition_date": outcome.day, "run_id": run_id,
            "success": outcome.success, "evaluated": outcome.evaluated,
            "critical_failed": len(outcome.critical_failures),
            "warning_failed": len(outcome.warning_failures),
            "failures": outcome.critical_failures + outcome.warning_failures,
            "result_uri": outcome.result_uri, "docs_uri": outcome.docs_uri, "validated_at": now,
        })  # fmt: skip
    warnings = sum(len(o.warning_failures) for o in outcomes)
    failed = [o for o in outcomes if not o.success]
    if failed:
        detail = " | ".join(f"{o.suite} {o.day}: {o.describe_failures()}" for o in failed[:10])
        _alert_validation(url, failed, run_id, pages.get("index.html"))
        raise ValidationFailed(
            f"{len(failed)} suite run(s) failed critical expectations; features not published. {detail}. "
            f"Data Docs: {pages.get('index.html')}"
        )
    log.info(
        "validate: %d suite runs passed, %d warning(s); Data Docs %s", len(outcomes), warnings, pages.get("index.html")
    )
    return {"days": len(days), "success": True, "suite_runs": len(outcomes), "warnings": warnings,
            "data_docs": pages.get("index.html")}  # fmt: skip


def _alert_validation(url: str, failed: list, run_id: str, docs: str | None) -> None:
    from include.core.alerts import Alert, send

    days = sorted({o.day for o in failed})
    send(url, Alert(
        kind="validation_failed", key=",".join(d.isoformat() for d in days), severity="critical",
        title=f"Validation failed for {days[0]}" + (f" … {days[-1]} ({len(days)} days)" if len(days) > 1 else ""),
        impact="the day's features were NOT published: training and monitoring skip it until it is fixed",
        details=[f"{o.suite} {o.day}: {o.describe_failures()}" for o in failed],
        next_step="open the Data Docs, fix the source (or quarantine rules), then re-ingest the day from the form",
        link=next((o.docs_uri for o in failed if o.docs_uri), docs), dag_id=INGEST_DAG, task_id="validate",
        run_id=run_id,
    ))  # fmt: skip


def _json_bytes(payload: dict[str, Any]) -> bytes:
    import json

    return json.dumps(payload, indent=1, sort_keys=True, default=str).encode()


def materialize(settings: Settings, days: list[dt.date], run_id: str, now: dt.datetime) -> dict[str, Any]:
    """Publish the days' offline feature files, then materialize exactly their window online."""
    from include.core.feast import open_store
    from include.ingest.publish import materialize_window, online_row_count, publish_day

    url = settings.require_database_url()
    root = lake.lake_root(settings)
    started = time.monotonic()
    offline_rows: dict[str, int] = {}
    for index, day in enumerate(days, start=1):
        for view, count in publish_day(root, day).items():
            offline_rows[view] = offline_rows.get(view, 0) + count
        _progress("publish features", index, days, started)
    start = local_midnight_utc(days[0]).to_pydatetime()
    end = local_midnight_utc(days[-1] + dt.timedelta(days=1)).to_pydatetime()
    views = materialize_window(open_store(settings), start, end)
    for day in days:
        records.record_ingestion(url, {
            "run_id": run_id, "partition_date": day, "dag_id": INGEST_DAG, "source": settings.source,
            "status": "materialized", "updated_at": now,
        })  # fmt: skip
    online = online_row_count(url)
    log.info("materialize: %s → %s online rows in %.1f s", views, online, time.monotonic() - started)
    return {"days": len(days), "feature_views_materialized": len(views), "views": views,
            "offline_rows": offline_rows, "online_rows": online,
            "window": [start.isoformat(), end.isoformat()]}  # fmt: skip
