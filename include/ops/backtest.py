"""`make backtest` / `bin/nightshift backtest`: the rolling backtest end to end on this machine.

Sets up like the demo, ingests every day the windows need that was never validated (one
`nightshift_ingest` run per missing stretch), then runs `include.train.backtest` window by window
and writes `report.json` and `index.html` with one plot per metric (default `.local/backtest/`).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from include import db
from include.core.assets import INGEST_DAG
from include.core.config import NightlyTraining, Settings, load_settings
from include.ops.demo import run_dag
from include.ops.postgres import embedded_data_dir, stop_embedded
from include.train.backtest import days_needed, run_window, summarize, write_report


def never_validated(url: str, days: list[dt.date]) -> list[dt.date]:
    """Days with no validation result at all (a day validated and rejected was ingested: not again)."""
    with db.engine(url).connect() as conn:
        seen = set(conn.execute(sa.select(sa.distinct(db.validation_results.c.partition_date)).where(
            db.validation_results.c.partition_date.in_(days))).scalars())  # fmt: skip
    return [d for d in days if d not in seen]


def stretches(days: list[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Consecutive runs of days as (first, last)."""
    out = []
    for _, group in itertools.groupby(enumerate(sorted(days)), key=lambda item: item[1].toordinal() - item[0]):
        run = [d for _, d in group]
        out.append((run[0], run[-1]))
    return out


def print_table(report: dict[str, Any]) -> None:
    print("\nnightshift backtest")
    header = (
        f"{'test week ending':<17}{'AUC':>8}{'GBDT':>8}{'ratio':>8}{'ECE':>8}{'ECE raw':>9}{'method':>17}{'min':>7}"
    )
    print(header)
    print("-" * len(header))
    for w in report["windows"]:
        print(f"{w['test_end']:<17}{w['auc']:>8.4f}{w['gbdt_auc']:>8.4f}{w['auc_ratio']:>8.4f}{w['ece']:>8.4f}"
              f"{w['ece_uncalibrated']:>9.4f}{w['ensemble_method']:>17}{w['minutes']:>7.1f}")  # fmt: skip
    print("-" * len(header))
    print(f"min auc_ratio {report['min_auc_ratio']:.4f} (target >= 1.00) · max ECE {report['max_ece']:.4f} "
          f"(target <= 0.03) · worst slice gap {report['max_slice_gap']:.4f} (target >= -0.03)")  # fmt: skip


def run_backtest(settings: Settings, prepare: Callable[[Settings], dict[str, str]], ends: list[dt.date],
                 out: Path, keep_postgres: bool = False) -> int:  # fmt: skip
    began = time.monotonic()
    try:
        env = prepare(settings)
        os.environ.update(env)  # the windows' Feast reads and the trainer subprocesses use the same setup
        bound = load_settings(env)
        url = bound.require_database_url()
        budget = NightlyTraining.from_env(env)
        needed = days_needed(ends, budget)
        for first, last in stretches(never_validated(url, needed)):
            run_dag(env, INGEST_DAG, {"start_date": first.isoformat(), "end_date": last.isoformat()}, quiet=True)
        windows = []
        for index, end in enumerate(ends, start=1):
            print(f"==> backtest window {index}/{len(ends)}: test week ending {end} "
                  f"({time.monotonic() - began:.0f} s so far)", flush=True)  # fmt: skip
            windows.append(run_window(bound, end, budget))
        report = summarize(windows, budget)
        report["seconds"] = round(time.monotonic() - began, 1)
        path = write_report(report, out)
        print_table(report)
        print(f"took {report['seconds']:.0f} s; written to {path} and {path.parent / 'index.html'}\n")
        return 0
    finally:
        if not settings.database_url and not keep_postgres:
            stop_embedded(embedded_data_dir(settings.local_dir))
