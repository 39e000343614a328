"""A rolling-origin backtest: the nightly training, as the train form runs it, on several test weeks
across 2013, each scored against the honest GBDT baseline on the same rows.

For each window (test week ending `end`, the nightly window sizes and budget) it builds the point-in-
time training set, runs the training entry point's `tune` and `evaluate` (the same subprocess as the
train DAG's local backend) and keeps what `evaluate` measured. Nothing is registered: a backtest
version never competes with the production model. `{lake}/backtest/<end>/` holds each window's
dataset and models; the report goes where the caller says (`make backtest`: `.local/backtest/`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

from include.core import lake
from include.core.config import NightlyTraining, Settings
from include.train.dataset import Window
from include.train.steps import VALIDATION_DAYS

log = logging.getLogger(__name__)

# Test weeks ending at the end of each quarter; the last one stops before the holidays' last week.
DEFAULT_ENDS = (dt.date(2013, 3, 31), dt.date(2013, 6, 30), dt.date(2013, 9, 30), dt.date(2013, 12, 24))
HISTORY_DAYS = 7  # the 7-day delay history needs the week before a window's first day
METRICS = ("auc", "gbdt_auc", "auc_ratio", "ece", "ece_uncalibrated", "pr_auc", "log_loss", "minutes")


FIRST_DAY = dt.date(2013, 1, 1)  # the replay's first day


def parse_ends(text: str, budget: NightlyTraining | None = None) -> list[dt.date]:
    """`--ends`: test weeks' last days, comma-separated, each late enough for a whole window and its history."""
    from include.core.config import ConfigError

    budget = budget or NightlyTraining()
    ends = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            end = dt.date.fromisoformat(part)
        except ValueError:
            raise ConfigError(f"backtest --ends: {part!r} is not a date (YYYY-MM-DD)") from None
        earliest = FIRST_DAY + (end - (window_for(end, budget).start - dt.timedelta(days=HISTORY_DAYS)))
        if end < earliest:
            raise ConfigError(f"backtest --ends: a window ending {end} starts before {FIRST_DAY} with its history; "
                              f"the earliest end is {earliest}")  # fmt: skip
        ends.append(end)
    if not ends:
        raise ConfigError("backtest --ends names no day")
    return sorted(set(ends))


def window_for(end: dt.date, budget: NightlyTraining) -> Window:
    return Window(end=end, train_days=budget.train_days, validation_days=VALIDATION_DAYS, test_days=budget.test_days)


def days_needed(ends: list[dt.date], budget: NightlyTraining) -> list[dt.date]:
    """Every day the windows read, with the history week before each."""
    needed: set[dt.date] = set()
    for end in ends:
        start = window_for(end, budget).start - dt.timedelta(days=HISTORY_DAYS)
        needed.update(start + dt.timedelta(days=i) for i in range((end - start).days + 1))
    return sorted(needed)


def run_window(settings: Settings, end: dt.date, budget: NightlyTraining) -> dict[str, Any]:
    """One window: dataset, tune, evaluate; the row of the report."""
    from include.train.backends import run_training_cli
    from include.train.steps import build_dataset

    began = time.monotonic()
    params = {**dataclasses.asdict(budget), "end_date": end.isoformat()}
    run_id = f"backtest__{end.isoformat()}__seed{budget.seed}"
    dataset = build_dataset(settings, params, run_id)
    out = lake.uri(lake.lake_root(settings) / "backtest" / end.isoformat() / f"seed{budget.seed}")
    common = ["--dataset", dataset["uri"], "--out", out, "--seed", str(budget.seed)]
    log.info("backtest window ending %s: %s", end, json.dumps(dataset["splits"]))
    run_training_cli(["tune", *common, "--tuner", budget.tuner, "--max-trials", str(budget.max_trials),
                      "--epochs", str(budget.epochs), "--ensemble-size", str(budget.ensemble_size)])  # fmt: skip
    evaluated = run_training_cli(["evaluate", *common, "--ensemble-method", budget.ensemble_method,
                                  "--tree-member" if budget.tree_member else "--no-tree-member"])  # fmt: skip
    window = window_for(end, budget)
    test_start = window.end - dt.timedelta(days=budget.test_days - 1)
    row = {
        "test_start": test_start.isoformat(), "test_end": end.isoformat(), "rows_test": evaluated["test_rows"],
        "auc": evaluated["metrics"]["auc"], "gbdt_auc": evaluated["gbdt_auc"], "auc_ratio": evaluated["auc_ratio"],
        "ece": evaluated["metrics"]["ece"], "ece_uncalibrated": evaluated["calibration"]["ece_before"],
        "pr_auc": evaluated["metrics"]["pr_auc"], "log_loss": evaluated["metrics"]["log_loss"],
        "ensemble_method": evaluated["ensemble"]["method"], "calibration": evaluated["calibration"]["kind"],
        "members": [m["family"] for m in evaluated["member_metrics"]],
        # The networks alone, combined the same way: what the tree member added (absent before it existed).
        "network_auc": evaluated.get("network_auc"), "network_auc_ratio": evaluated.get("network_auc_ratio"),
        "test_positive_rate": dataset["splits"]["test"]["positive_rate"],
        "validation_positive_rate": dataset["splits"]["validation"]["positive_rate"],
        "worst_slices": worst_slices(evaluated), "report": evaluated["report"],
        "minutes": round((time.monotonic() - began) / 60, 2),
    }  # fmt: skip
    log.info("backtest window ending %s: AUC %.4f, GBDT %.4f, ratio %.4f, ECE %.4f, %.1f min", end, row["auc"],
             row["gbdt_auc"], row["auc_ratio"], row["ece"], row["minutes"])  # fmt: skip
    return row


def worst_slices(evaluated: dict[str, Any], names: tuple[str, ...] = ("carrier", "origin")) -> list[dict[str, Any]]:
    """Carrier and origin slices where the ensemble's AUC is below GBDT's on the same rows, worst first."""
    gbdt = evaluated.get("gbdt", {}).get("slices", {})
    rows = []
    for name in names:
        for value, auc in evaluated["slices"].get(name, {}).items():
            baseline = gbdt.get(name, {}).get(value)
            if baseline is not None and auc < baseline:
                rows.append({"slice": name, "value": value, "auc": round(auc, 4), "gbdt_auc": round(baseline, 4),
                             "gap": round(auc - baseline, 4)})  # fmt: skip
    return sorted(rows, key=lambda r: r["gap"])


def summarize(windows: list[dict[str, Any]], budget: NightlyTraining) -> dict[str, Any]:
    return {
        "windows": windows,
        "min_auc_ratio": min(w["auc_ratio"] for w in windows),
        "max_ece": max(w["ece"] for w in windows),
        "max_slice_gap": min((s["gap"] for w in windows for s in w["worst_slices"]), default=0.0),
        "minutes": round(sum(w["minutes"] for w in windows), 2),
        "budget": dataclasses.asdict(budget),
    }


def plot_metrics(report: dict[str, Any], folder: Path) -> list[str]:
    """One plot per metric across the windows (the ensemble next to GBDT where both exist)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = report["windows"]
    labels = [w["test_end"] for w in windows]
    pairs = {"auc": ("auc", "gbdt_auc"), "auc_ratio": ("auc_ratio",), "ece": ("ece", "ece_uncalibrated"),
             "pr_auc": ("pr_auc",), "log_loss": ("log_loss",), "minutes": ("minutes",)}  # fmt: skip
    limits = {"auc_ratio": 1.0, "ece": 0.03}
    names = []
    for name, keys in pairs.items():
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        for key in keys:
            ax.plot(labels, [w[key] for w in windows], marker="o", label=key)
        if name in limits:
            ax.axhline(limits[name], color="k", linestyle=":", linewidth=0.8, label=f"target {limits[name]}")
        ax.set(title=f"{name} per test week", xlabel="test week ending")
        ax.legend(fontsize=8)
        fig.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        names.append(f"{name}.png")
    return names


def write_report(report: dict[str, Any], folder: Path) -> Path:
    """`report.json` and `index.html` (Jinja2, autoescape on) with the plots, under `folder`."""
    import jinja2

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plots = plot_metrics(report, folder)
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                                     autoescape=True, undefined=jinja2.StrictUndefined)  # fmt: skip
    html = environment.get_template("backtest.html.j2").render(report=report, plots=plots)
    (folder / "index.html").write_text(html)
    return folder / "report.json"


def missing_stretches(url: str, ends: list[dt.date], budget: NightlyTraining) -> list[tuple[dt.date, dt.date]]:
    """The stretches of days the windows need whose latest validation did not pass (or never ran)."""
    import itertools

    from include.ingest.records import published_days

    needed = days_needed(ends, budget)
    published = published_days(url, needed)
    missing = [d for d in needed if d not in published]
    out = []
    for _, group in itertools.groupby(enumerate(missing), key=lambda item: item[1].toordinal() - item[0]):
        days = [d for _, d in group]
        out.append((days[0], days[-1]))
    return out


def publish_report(settings: Settings, report: dict[str, Any], run_id: str) -> str:
    """The report and its plots under `{lake}/reports/backtest/<run>/`; returns the page's URI."""
    import tempfile

    folder = lake.lake_root(settings) / "reports" / "backtest" / lake.safe_name(run_id)
    with tempfile.TemporaryDirectory(prefix="nightshift-backtest-") as tmp:
        written = write_report(report, Path(tmp))
        for path in sorted(written.parent.iterdir()):
            lake.write_atomic(folder / path.name, path.read_bytes())
    return lake.uri(folder / "index.html")
