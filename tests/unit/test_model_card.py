"""The model card's content and escaping, from a registry row (no database: `card_context`'s shape)."""

from __future__ import annotations

import datetime as dt

from include.train.model_card import KNOWN_LIMITS, render_card, slice_rows

HOSTILE = "<script>alert(1)</script>|x"
AT = dt.datetime(2026, 12, 7, 6, 0, tzinfo=dt.UTC)


def _context(**changes: object) -> dict:
    metrics = {
        "auc": 0.70, "gbdt_auc": 0.72, "auc_ratio": 0.972, "ece": 0.08, "ece_uncalibrated": 0.09,
        "ensemble_method": "stacking", "calibration": "platt",
        "warm_start": {"competed": ["champion", "fresh"], "won": "champion", "from_version": 2},
        "slices": {"origin": {"EWR": 0.71, "JFK": 0.66, "LGA": 0.70}, "carrier": {HOSTILE: 0.6}},
        "gbdt_slices": {"origin": {"EWR": 0.70, "JFK": 0.70, "LGA": 0.71}},
        "importance": [{"feature": "sched_dep_hour", "auc_drop": 0.038, "ci_low": 0.035, "ci_high": 0.041}],
    }  # fmt: skip
    v = {"version": 3, "status": "production", "gate_note": "all checks passed", "created_at": AT,
         "data_window": {"train": "2013-01-20…2013-03-17", "test": "2013-03-25…2013-03-31"},
         "dataset_uri": "file:///lake/datasets/r", "dataset_sha256": "ab", "feature_service": "flight_delay_v2",
         "feast_registry_version": "4", "ingestion_run_ids": ["i1"], "validation_run_ids": ["v1"],
         "dag_id": "nightshift_train", "run_id": HOSTILE, "code_version": "c0de", "artifact_uri": "file:///m",
         "artifact_sha256": "ff", "metrics": metrics}  # fmt: skip
    context = {
        "v": v, "overall": {"auc": 0.70, "gbdt_auc": 0.72}, "slices": slice_rows(metrics),
        "top_inputs": metrics["importance"], "members": [{"family": "mlp"}, {"family": "dcn"}],
        "checks": [{"name": "auc_floor", "kind": "value", "passed": True, "observed": 0.70, "threshold": 0.62,
                    "detail": HOSTILE}],
        "promotions": [{"created_at": AT, "who": "oncall", "dag_id": "nightshift_deploy", "run_id": "manual__1",
                        "reason": "stable 2 → 3"}],
        "intended_use": "use", "users": "users", "not_for": "not for", "limits": KNOWN_LIMITS, "written_at": "now",
    }  # fmt: skip
    return {**context, **changes}


def test_slices_worse_than_gbdt_are_flagged_and_a_gap_past_003_is_named() -> None:
    rows = {(r["slice"], r["value"]): r for r in slice_rows(_context()["v"]["metrics"])}
    assert rows[("origin", "EWR")]["flag"] == ""
    assert rows[("origin", "LGA")]["flag"] == "below GBDT"
    assert rows[("origin", "JFK")]["flag"] == "below GBDT by more than 0.03"
    assert rows[("carrier", HOSTILE)]["gbdt_auc"] is None  # no baseline for that slice: nothing to flag
    assert rows[("carrier", HOSTILE)]["flag"] == ""


def test_the_card_covers_every_section_and_escapes_what_it_shows() -> None:
    html, markdown = render_card(_context())
    for section in ("Intended use", "Data and lineage", "Metrics on the test days", "Calibration", "Slices",
                    "What drives its predictions", "Known limits", "The gate", "Promotions"):  # fmt: skip
        assert section in html
        assert section in markdown
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;|x" in html
    assert "below GBDT by more than 0.03" in html
    assert "stacking" in html
    assert "the production model fine-tuned on this window (warm start from version 2)" in html
    assert "(warm start from version 2); candidates champion and fresh." in markdown
    assert "2013 departures from New York only" in markdown
    # A value with a pipe cannot break a Markdown table row.
    assert "\\|x" in markdown
    assert "- 2026-12-07 06:00:00+00:00: oncall (nightshift_deploy / manual__1): stable 2 → 3" in markdown
    assert "| `sched_dep_hour` | 0.0380 | 0.0350 … 0.0410 |" in markdown
    unpromoted = render_card(_context(promotions=[], top_inputs=[]))[1]
    assert "Not promoted (yet)." in unpromoted
    assert "Not measured for this version." in unpromoted
