"""The steps of `nightshift_train` that run in the Airflow worker (no TensorFlow here).

Building the training set, finding the champion, and the gate + registration that turn the
training CLI's summaries into a registered, blessed or rejected model version.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from include import db
from include.core import lake
from include.core.assets import TRAIN_DAG
from include.core.config import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

VALIDATION_DAYS = 7


def code_version() -> str:
    try:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def latest_validated_day(url: str) -> dt.date | None:
    """The last day whose latest validation passed every suite (a day rejected since does not count)."""
    from include.ingest.records import published_days

    published = published_days(url)
    return max(published) if published else None


def resolve_window(settings: Settings, params: dict[str, Any]):
    from include.train.dataset import DatasetError, Window

    url = settings.require_database_url()
    end = dt.date.fromisoformat(params["end_date"]) if params.get("end_date") else latest_validated_day(url)
    if end is None:
        raise DatasetError("no validated day yet: run nightshift_ingest first")
    return Window(end=end, train_days=int(params["train_days"]), validation_days=VALIDATION_DAYS,
                  test_days=int(params["test_days"]))  # fmt: skip


def _lineage(url: str, start: dt.date, end: dt.date) -> tuple[list[str], list[str]]:
    """The ingestion and validation runs whose data the window used (latest per day)."""
    with db.engine(url).connect() as conn:
        ingested = conn.execute(
            sa.select(sa.distinct(db.partitions.c.run_id)).where(
                db.partitions.c.dataset == "clean/flights", db.partitions.c.partition_date.between(start, end)
            )
        ).scalars()
        validated = conn.execute(
            sa.select(sa.distinct(db.validation_results.c.run_id)).where(
                db.validation_results.c.partition_date.between(start, end), db.validation_results.c.success
            )
        ).scalars()
        return sorted(ingested), sorted(validated)


def build_dataset(settings: Settings, params: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The training set of the window, read only from days whose latest validation passed; a window
    missing more than `max_missing_day_share` of its days is refused at once, naming them."""
    from include.ingest.records import published_days
    from include.train.dataset import build_training_set

    window = resolve_window(settings, params)
    url = settings.require_database_url()
    published = published_days(url, window.days())
    manifest = build_training_set(settings, window, run_id, published)
    ingestion, _ = _lineage(url, window.start, window.end)
    validation = sorted(set(published.values()))
    models = lake.lake_root(settings) / "models" / lake.safe_name(run_id)
    return {
        "uri": manifest["uri"],
        "models_uri": lake.uri(models),
        "content_sha256": manifest["content_sha256"],
        "window": manifest["window"],
        "splits": {k: {"rows": v["rows"], "positive_rate": v["positive_rate"]} for k, v in manifest["splits"].items()},
        "feature_service": manifest["feature_service"],
        "feast_registry_version": manifest["feast_registry_version"],
        "ingestion_run_ids": ingestion,
        "validation_run_ids": validation,
        "excluded_days": manifest["excluded_days"],
    }


# How the form names the window: the dataset's bytes already pin it, so a run with "Last day" empty
# (the latest validated day) and one that names that same day are the same training.
WINDOW_SPELLING = "end_date"


def identical_version(url: str, params: dict[str, Any], dataset: dict[str, Any]) -> int | None:
    """The version trained on the same dataset bytes, by the same code, with the same form values
    (apart from how the window's last day was named)."""
    mv = db.model_versions
    form = {k: v for k, v in params.items() if k != WINDOW_SPELLING}
    with db.engine(url).connect() as conn:
        return conn.execute(
            sa.select(mv.c.version)
            .where(mv.c.dataset_sha256 == dataset["content_sha256"], mv.c.code_version == code_version(),
                   mv.c.params.op("-")(WINDOW_SPELLING)
                   == sa.cast(sa.literal(json.dumps(form, sort_keys=True, default=str)), JSONB))
            .order_by(mv.c.version.desc())
            .limit(1)
        ).scalar()  # fmt: skip


def needs_training(settings: Settings, params: dict[str, Any], dataset: dict[str, Any], run_id: str) -> bool:
    """At most one training per night's data, in the style of TFX's and Kubeflow's caching: a run whose
    dataset, code and parameters equal an existing version's is skipped, and records why. So the
    02:00 fallback, the features event and a retraining request of the same night coalesce."""
    url = settings.require_database_url()
    same = identical_version(url, params, dataset)
    if same is None:
        return True
    outcome = f"skipped: identical to v{same}"
    with db.engine(url).begin() as conn:
        conn.execute(sa.update(db.runs).where(db.runs.c.dag_id == TRAIN_DAG, db.runs.c.run_id == run_id)
                     .values(outcome=outcome))  # fmt: skip
    log.info("%s (dataset %s, code %s)", outcome, dataset["content_sha256"][:12], code_version())
    return False


def champion_uri(settings: Settings) -> str:
    from include.train.registry import production_version

    champion = production_version(settings.require_database_url())
    return champion["artifact_uri"] if champion else ""


def gate_and_register(
    settings: Settings,
    params: dict[str, Any],
    dataset: dict[str, Any],
    tuned: dict[str, Any] | list[dict[str, Any]],
    evaluated: dict[str, Any],
    run_id: str,
    at: dt.datetime,
) -> dict[str, Any]:
    """Register the candidate, run the gate, record every check, bless or reject."""
    from include.train.gate import GateThresholds, run_gate, saved_model_sha256, verdict
    from include.train.model_card import write_model_card
    from include.train.registry import (
        record_checks,
        register_candidate,
        set_report_uri,
        set_status,
        version_by_artifact,
    )

    url = settings.require_database_url()
    # One summary, or one per shard when tuning fanned out (a lazy XCom sequence).
    shards = [tuned] if isinstance(tuned, dict) else list(tuned)
    # Warm start: which of the fresh search and the fine-tuned champion won, and from which version.
    warm_start = dict(evaluated.get("warm_start") or {})
    warm_from = next((t["warm_from"] for t in shards if t.get("warm_from")), None)
    if warm_from and any(t.get("warm_members") for t in shards):
        warm_start["from_version"] = version_by_artifact(url, warm_from)
    record = {
        "dag_id": TRAIN_DAG,
        "run_id": run_id,
        "code_version": code_version(),
        "artifact_uri": evaluated["saved_model"],
        # The bytes this gate judges: deploy's push serves these or nothing.
        "artifact_sha256": saved_model_sha256(lake.at(settings, evaluated["saved_model"])),
        "reference_uri": evaluated["reference"],
        "dataset_uri": dataset["uri"],
        "dataset_sha256": dataset["content_sha256"],
        "data_window": dataset["window"],
        "feature_service": dataset["feature_service"],
        "feast_registry_version": dataset["feast_registry_version"],
        "ingestion_run_ids": dataset["ingestion_run_ids"],
        "validation_run_ids": dataset["validation_run_ids"],
        "metrics": {**evaluated["metrics"], "gbdt_auc": evaluated["gbdt_auc"], "auc_ratio": evaluated["auc_ratio"],
                    "slices": evaluated["slices"], "ensemble_weights": evaluated["weights"],
                    "ensemble_method": evaluated.get("ensemble", {}).get("method", "averaging"),
                    "calibration": evaluated.get("calibration", {}).get("kind", "none"),
                    "ece_uncalibrated": evaluated.get("calibration", {}).get("ece_before"),
                    "importance": evaluated.get("importance", []), "network_auc": evaluated.get("network_auc"),
                    "gbdt_slices": evaluated.get("gbdt", {}).get("slices", {}), "warm_start": warm_start},
        "hyperparameters": {"tuner": shards[0]["tuner"], "shards": len(shards),
                            "trials": sum(t["trials"] for t in shards),
                            "members": [m["hyperparameters"] for t in shards for m in t["members"]],
                            "tree_member": evaluated.get("tree_member")},
        "params": params,
    }  # fmt: skip
    version = register_candidate(url, record, at)
    checks = run_gate(evaluated, evaluated.get("champion"), GateThresholds.from_env())
    record_checks(url, version, checks)
    status = verdict(checks)
    failed = [c.name for c in checks if not c.passed]
    note = "all checks passed" if not failed else f"failed: {', '.join(failed)}"
    if evaluated.get("champion") is None:
        note += "; first model: no champion, value and sanity thresholds only"
    set_status(url, version, status, at, note)
    root = lake.lake_root(settings)
    report = root / "reports" / "evaluation" / str(version)
    lake.copy_tree(root / "models" / lake.safe_name(run_id) / "report", report)
    set_report_uri(url, version, lake.uri(report / "index.html"))
    write_model_card(settings, version)
    log.info("model version %d %s (%s); report %s", version, status, note, lake.uri(report / "index.html"))
    return {"version": version, "status": status, "note": note, "checks": len(checks), "failed_checks": failed,
            "auc": evaluated["metrics"]["auc"], "gbdt_auc": evaluated["gbdt_auc"],
            "auc_ratio": evaluated["auc_ratio"], "report": lake.uri(report / "index.html")}  # fmt: skip
