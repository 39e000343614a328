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


def run_days(settings: Settings, params: dict[str, Any], interval_start: dt.datetime | None,
             interval_end: dt.datetime | None) -> list[dt.date]:  # fmt: skip
    """The days an ingest run covers: the form's range, else its data interval's night(s). Under the
    replay clock (`bin/nightshift airflow` sets it after the demo, `bin/nightshift nights` for its
    nights), a scheduled or backfilled night stands for the next 2013 day after the demo's data, not
    the same month/day of 2013: the replay source serves that day, and the landing source reads the
    files dropped for it (`landing/flights/date=<that day>/`)."""
    from include.core.calendar import form_days, replayed_days, resolve_days

    days = resolve_days(params, interval_start, interval_end)
    if form_days(params) is None and settings.replay_start and settings.replay_first_day:
        return replayed_days(days, settings.replay_start, settings.replay_first_day)
    return days


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


def history_days(url: str, day: dt.date, cleaning: list[dt.date]) -> list[dt.date]:
    """The days whose delay stats feed `day`'s history features: the week before it, less the days
    whose latest validation failed, so a rejected day's outcomes never reach another day's features.
    A day cleaned again in this run keeps its place: its old verdict was on other data."""
    window = history_window(day)
    refused = records.rejected_days(url, window) - set(cleaning)
    return [d for d in window if d not in refused]


def clean(settings: Settings, days: list[dt.date], run_id: str, now: dt.datetime) -> dict[str, Any]:
    """Clean each day in order, so a day's history features see the days just cleaned before it (and
    none whose latest validation failed)."""
    url = settings.require_database_url()
    root = lake.lake_root(settings)
    started = time.monotonic()
    totals = {"rows_raw": 0, "rows_clean": 0, "rows_quarantined": 0}
    reasons: dict[str, int] = {}
    for index, day in enumerate(days, start=1):
        raw = lake.read_parquet(lake.partition_file(root, "raw", "flights", day))
        earlier = lake.read_partitions(root, "clean", "delay_stats", history_days(url, day, days))
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


def row_count_bounds(
    url: str, day: dt.date, tolerance: float, passed: set[dt.date] = frozenset(), rejected: set[dt.date] = frozenset()
) -> tuple[int, int]:
    """Bounds on a day's clean rows from the mean of the recorded days before it.

    A rejected day never sets the bar for the next: days rejected in this run (`rejected`) or whose
    latest validation failed (and not passed in this run) are left out of the mean."""
    recent = records.partition_rows(url, "clean/flights", history_window(day))
    refused = rejected | (records.rejected_days(url, recent) - passed)
    recent = {d: n for d, n in recent.items() if d not in refused}
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
    passed: set[dt.date] = set()
    rejected: set[dt.date] = set()
    for index, day in enumerate(days, start=1):
        low, high = row_count_bounds(url, day, settings.row_count_tolerance, passed, rejected)
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
            (passed if outcome.success else rejected).add(day)
        passed -= rejected
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
    rejected = sorted({o.day for o in failed})
    detail = " | ".join(f"{o.suite} {o.day}: {o.describe_failures()}" for o in failed[:10])
    if failed:
        # Each day stands alone: a rejected day is withdrawn from the feature store (an earlier run may
        # have published it) and the rest of the range goes on to be published.
        from include.ingest.publish import unpublish_day

        for day in rejected:
            withdrawn = unpublish_day(root, day)
            records.record_ingestion(url, {
                "run_id": run_id, "partition_date": day, "dag_id": INGEST_DAG, "source": settings.source,
                "status": "rejected", "updated_at": now,
            })  # fmt: skip
            log.warning("validate: %s rejected; %d published feature file(s) withdrawn", day, len(withdrawn))
        _alert_validation(url, failed, run_id, pages.get("index.html"))
        if len(rejected) == len(days):
            raise ValidationFailed(
                f"{len(failed)} suite run(s) failed critical expectations; no day of the range is published. "
                f"{detail}. Data Docs: {pages.get('index.html')}"
            )
    log.info("validate: %d suite runs, %d day(s) rejected, %d warning(s); Data Docs %s", len(outcomes),
             len(rejected), warnings, pages.get("index.html"))  # fmt: skip
    return {"days": len(days), "success": not failed, "suite_runs": len(outcomes), "warnings": warnings,
            "rejected_days": [d.isoformat() for d in rejected], "rejected": detail,
            "data_docs": pages.get("index.html")}  # fmt: skip


def raise_for_rejected(validated: dict[str, Any]) -> dict[str, Any]:
    """The run's last word: fail it (at once, without retries) if validate rejected any day.

    The other days were published before this, so training and monitoring go on without the
    rejected ones; the run still shows failed, and on-call has the validation alert.
    """
    from include.ingest.validate import ValidationFailed

    if validated.get("rejected_days"):
        days = validated["rejected_days"]
        raise ValidationFailed(f"{len(days)} day(s) rejected by validation and not published: {', '.join(days[:20])}"
                               f"{' …' if len(days) > 20 else ''}. {validated.get('rejected', '')}. "
                               f"Data Docs: {validated.get('data_docs')}")  # fmt: skip
    return {"rejected_days": []}


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
    """Publish the offline feature files of the days whose latest validation passed, then materialize
    exactly their window online. A day rejected by validation is never published."""
    from include.core.feast import open_store
    from include.ingest.publish import materialize_window, online_row_count, publish_day
    from include.ingest.validate import ValidationFailed

    url = settings.require_database_url()
    root = lake.lake_root(settings)
    validated = records.published_days(url, days)
    skipped = [d for d in days if d not in validated]
    if skipped:
        log.warning("materialize: %d day(s) not validated, not published: %s", len(skipped), skipped[:20])
    days = [d for d in days if d in validated]
    if not days:
        raise ValidationFailed("no day of the range passed validation; nothing to publish")
    started = time.monotonic()
    offline_rows: dict[str, int] = {}
    for index, day in enumerate(days, start=1):
        refused = records.rejected_days(url, history_window(day))  # validated by now, this run's days too
        for view, count in publish_day(root, day, refused).items():
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
            "published_days": [d.isoformat() for d in days], "skipped_days": [d.isoformat() for d in skipped],
            "window": [start.isoformat(), end.isoformat()]}  # fmt: skip
