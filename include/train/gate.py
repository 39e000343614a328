"""The blessing gate, after TFX's Evaluator: value, change and sanity checks on a candidate.

Every check is returned with pass/fail, the observed value and the threshold, so the registry
can show exactly why a version was blessed or rejected. The gate also fingerprints the SavedModel
it blessed (`saved_model_sha256`), so deploy can refuse files that are not the ones it judged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

IMPORTANT_SLICES = ("origin", "hour_bucket")
_CHUNK = 1 << 20


def saved_model_sha256(root: Any, exclude: Collection[str] = ()) -> str:
    """SHA-256 over an export dir (a local Path or a lake ObjectStoragePath): every file's relative path
    and bytes, in sorted path order, each length-framed so no two trees share a digest. Files are read
    in 1 MiB chunks. `exclude` names relative paths left out (serving's own additions, e.g. warmup).
    """
    from include.core.lake import relative

    files = sorted((relative(p, root), p) for p in root.rglob("*") if p.is_file())
    files = [(name, p) for name, p in files if name not in exclude]
    if not files:
        raise FileNotFoundError(f"no files under {root}: nothing to fingerprint")
    digest = hashlib.sha256()
    for name, path in files:
        encoded = name.encode()
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
        with path.open("rb") as handle:
            size = 0
            inner = hashlib.sha256()
            while chunk := handle.read(_CHUNK):
                inner.update(chunk)
                size += len(chunk)
        digest.update(size.to_bytes(8, "big") + inner.digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class GateThresholds:
    auc_floor: float = 0.62
    ece_ceiling: float = 0.10
    auc_tolerance: float = 0.01
    slice_tolerance: float = 0.03
    min_positive_rate: float = 0.01
    max_positive_rate: float = 0.90

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GateThresholds:
        from include.core.config import env_overrides

        return cls(**env_overrides(cls(), "NIGHTSHIFT_GATE_", env))


@dataclass(frozen=True)
class Check:
    name: str
    kind: str  # value | change | sanity | info
    passed: bool
    observed: float | None
    threshold: float | None
    detail: str


def run_gate(candidate: dict[str, Any], champion: dict[str, Any] | None, t: GateThresholds) -> list[Check]:
    """Checks for an `evaluate` summary; `champion` is the production model on the same rows."""
    metrics = candidate["metrics"]
    checks = [
        Check("auc_floor", "value", metrics["auc"] >= t.auc_floor, metrics["auc"], t.auc_floor,
              f"test AUC {metrics['auc']:.4f} must be ≥ {t.auc_floor}"),
        Check("ece_ceiling", "value", metrics["ece"] <= t.ece_ceiling, metrics["ece"], t.ece_ceiling,
              f"calibration error {metrics['ece']:.4f} must be ≤ {t.ece_ceiling}"),
        Check("finite_predictions", "sanity", metrics["non_finite_predictions"] == 0,
              float(metrics["non_finite_predictions"]), 0.0, "no NaN or infinite prediction"),
        Check("positive_rate_low", "sanity", metrics["predicted_positive_rate"] >= t.min_positive_rate,
              metrics["predicted_positive_rate"], t.min_positive_rate, "predicted-positive rate not collapsed"),
        Check("positive_rate_high", "sanity", metrics["predicted_positive_rate"] <= t.max_positive_rate,
              metrics["predicted_positive_rate"], t.max_positive_rate, "predicted-positive rate not saturated"),
    ]  # fmt: skip
    if champion is None:
        checks.append(
            Check("champion", "info", True, None, None, "no production model yet: value and sanity checks only")
        )
        return checks
    floor = champion["metrics"]["auc"] - t.auc_tolerance
    checks.append(
        Check("auc_vs_champion", "change", metrics["auc"] >= floor, metrics["auc"], floor,
              f"AUC {metrics['auc']:.4f} vs champion {champion['metrics']['auc']:.4f} on the same test rows, "
              f"tolerance {t.auc_tolerance}")
    )  # fmt: skip
    for slice_name in IMPORTANT_SLICES:
        for value, champion_auc in champion["slices"].get(slice_name, {}).items():
            observed = candidate["slices"].get(slice_name, {}).get(value)
            if observed is None:
                continue
            limit = champion_auc - t.slice_tolerance
            checks.append(
                Check(f"slice_{slice_name}_{value}", "change", observed >= limit, observed, limit,
                      f"AUC on {slice_name}={value}: {observed:.4f} vs champion {champion_auc:.4f}")
            )  # fmt: skip
    return checks


def verdict(checks: list[Check]) -> str:
    return "blessed" if all(c.passed for c in checks) else "rejected"
