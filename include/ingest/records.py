"""What ingestion records in Postgres per day: partition manifests, ingestion runs, quarantine counts
and validation results. Each write is an upsert keyed on the day, so a retry rewrites the same rows."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from include.db import engine, ingestion_runs, partitions, quarantine_counts, upsert, validation_results


def record_partition(
    url: str, dataset: str, day: dt.date, uri: str, rows: int, sha256: str, run_id: str, at: dt.datetime
) -> None:
    with engine(url).begin() as conn:
        upsert(
            conn,
            partitions,
            [
                {
                    "dataset": dataset,
                    "partition_date": day,
                    "uri": uri,
                    "rows": rows,
                    "content_sha256": sha256,
                    "run_id": run_id,
                    "written_at": at,
                }
            ],
        )


def replace_quarantine_counts(url: str, day: dt.date, counts: dict[str, int], run_id: str) -> None:
    """The day's counts per reason, replacing what an earlier run of the day recorded."""
    with engine(url).begin() as conn:
        conn.execute(sa.delete(quarantine_counts).where(quarantine_counts.c.partition_date == day))
        upsert(
            conn,
            quarantine_counts,
            [{"partition_date": day, "reason": r, "rows": n, "run_id": run_id} for r, n in counts.items()],
        )


def record_ingestion(url: str, row: dict[str, Any]) -> None:
    with engine(url).begin() as conn:
        upsert(conn, ingestion_runs, [row])


def record_validation(url: str, row: dict[str, Any]) -> None:
    row = {**row, "failures": json.loads(json.dumps(row["failures"], default=str))}
    with engine(url).begin() as conn:
        upsert(conn, validation_results, [row])


def partition_rows(url: str, dataset: str, days: Iterable[dt.date]) -> dict[dt.date, int]:
    """Row counts recorded for `dataset` on `days` (missing days are absent)."""
    days = list(days)
    if not days:
        return {}
    with engine(url).connect() as conn:
        result = conn.execute(
            sa.select(partitions.c.partition_date, partitions.c.rows).where(
                partitions.c.dataset == dataset, partitions.c.partition_date.in_(days)
            )
        )
        return {d: n for d, n in result}


# The suites every day must pass to be published (include/ingest/validate.py runs them).
VALIDATION_SUITES = ("flights_clean", "weather_clean")


def published_days(url: str, days: Iterable[dt.date] | None = None) -> dict[dt.date, str]:
    """The days whose LATEST validation passed every suite, each with the run that validated it.

    A day re-ingested and rejected since an earlier success is not published: its latest result wins.
    `days=None` means every recorded day.
    """
    v = validation_results
    latest = (
        sa.select(v.c.suite, v.c.partition_date, v.c.run_id, v.c.success)
        .distinct(v.c.suite, v.c.partition_date)
        .order_by(v.c.suite, v.c.partition_date, v.c.validated_at.desc(), v.c.run_id.desc())
    )
    if days is not None:
        days = list(days)
        if not days:
            return {}
        latest = latest.where(v.c.partition_date.in_(days))
    per_day: dict[dt.date, dict[str, tuple[str, bool]]] = {}
    with engine(url).connect() as conn:
        for suite, day, run_id, success in conn.execute(latest):
            per_day.setdefault(day, {})[suite] = (run_id, success)
    return {
        day: suites[VALIDATION_SUITES[0]][0]
        for day, suites in sorted(per_day.items())
        if all(s in suites and suites[s][1] for s in VALIDATION_SUITES)
    }


def rejected_days(url: str, days: Iterable[dt.date]) -> set[dt.date]:
    """The days among `days` that were validated and whose latest validation did not pass."""
    days = list(days)
    if not days:
        return set()
    with engine(url).connect() as conn:
        validated = set(conn.execute(
            sa.select(sa.distinct(validation_results.c.partition_date)).where(
                validation_results.c.partition_date.in_(days))
        ).scalars())  # fmt: skip
    return validated - set(published_days(url, validated))
