"""The rolling backtest's windows, its report and its command line, without a training run."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from include.core.config import ConfigError, NightlyTraining
from include.ops.backtest import stretches
from include.train.backtest import (
    DEFAULT_ENDS,
    days_needed,
    parse_ends,
    summarize,
    window_for,
    worst_slices,
    write_report,
)

BUDGET = NightlyTraining()


def test_the_default_windows_are_four_test_weeks_across_2013_each_with_the_nightly_sizes() -> None:
    assert [d.isoformat() for d in DEFAULT_ENDS] == ["2013-03-31", "2013-06-30", "2013-09-30", "2013-12-24"]
    window = window_for(dt.date(2013, 6, 30), BUDGET)
    assert (window.train_days, window.validation_days, window.test_days) == (60, 7, 7)
    assert window.start == dt.date(2013, 4, 18)
    needed = days_needed(list(DEFAULT_ENDS), BUDGET)
    assert needed[0] == dt.date(2013, 1, 10)  # the first window's start, less the 7-day history
    assert dt.date(2013, 4, 11) in needed  # the second window's history week
    assert dt.date(2013, 7, 5) not in needed  # between windows: not ingested for nothing
    assert [(a.isoformat(), b.isoformat()) for a, b in stretches(needed)] == [
        ("2013-01-10", "2013-03-31"), ("2013-04-11", "2013-06-30"), ("2013-07-12", "2013-09-30"),
        ("2013-10-05", "2013-12-24"),
    ]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), [
    ("2013-13-01", "'2013-13-01' is not a date"),
    ("2013-02-01", "the earliest end is 2013-03-22"),
    (" , ", "names no day"),
])  # fmt: skip
def test_a_bad_window_end_is_refused_saying_why(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_ends(text)


def test_ends_are_sorted_and_deduplicated() -> None:
    assert parse_ends("2013-06-30, 2013-03-31,2013-06-30") == [dt.date(2013, 3, 31), dt.date(2013, 6, 30)]


def _window(end: str, ratio: float, ece: float, slices: list[dict]) -> dict:
    return {"test_start": end, "test_end": end, "rows_test": 6000, "auc": 0.7 * ratio, "gbdt_auc": 0.7,
            "auc_ratio": ratio, "ece": ece, "ece_uncalibrated": ece + 0.01, "pr_auc": 0.4, "log_loss": 0.45,
            "ensemble_method": "<b>stacking</b>", "calibration": "platt", "members": ["mlp", "dcn"],
            "test_positive_rate": 0.13, "validation_positive_rate": 0.31, "worst_slices": slices,
            "report": "file:///x", "minutes": 2.5}  # fmt: skip


def test_the_report_names_the_worst_window_and_slice_and_draws_one_plot_per_metric(tmp_path) -> None:
    evaluated = {"slices": {"carrier": {"AA": 0.70, "B6": 0.60}, "origin": {"JFK": 0.69}},
                 "gbdt": {"slices": {"carrier": {"AA": 0.68, "B6": 0.66}, "origin": {"JFK": 0.70}}}}  # fmt: skip
    slices = worst_slices(evaluated)
    assert [(s["value"], s["gap"]) for s in slices] == [("B6", -0.06), ("JFK", -0.01)]
    report = summarize([_window("2013-03-31", 0.97, 0.08, slices), _window("2013-06-30", 1.01, 0.02, [])], BUDGET)
    assert report["min_auc_ratio"] == 0.97
    assert report["max_ece"] == 0.08
    assert report["max_slice_gap"] == -0.06
    assert report["minutes"] == 5.0
    path = write_report(report, tmp_path / "backtest")
    assert json.loads(path.read_text())["windows"][0]["test_end"] == "2013-03-31"
    html = (path.parent / "index.html").read_text()
    assert "&lt;b&gt;stacking&lt;/b&gt;" in html  # autoescaped
    assert html.count('class="miss"') == 3  # the first window: ratio < 1, ECE > 0.03, the B6 gap
    for name in ("auc", "auc_ratio", "ece", "pr_auc", "log_loss", "minutes"):
        assert (path.parent / f"{name}.png").stat().st_size > 1000
