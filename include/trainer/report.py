"""The evaluation report of a training run: ROC, PR, calibration and importance plots, and one HTML page rendered
from `templates/report.html.j2` with autoescape on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TEMPLATES = Path(__file__).resolve().parent / "templates"


def plot_curves(y: np.ndarray, curves: dict[str, np.ndarray], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    names = []
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, p in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test days")
    ax.legend(loc="lower right")
    fig.savefig(folder / "roc.png", dpi=110, bbox_inches="tight")
    names.append("roc.png")
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, p in curves.items():
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, label=label)
    ax.axhline(y.mean(), color="k", linestyle=":", linewidth=0.8)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, test days")
    ax.legend(loc="upper right")
    fig.savefig(folder / "pr.png", dpi=110, bbox_inches="tight")
    names.append("pr.png")
    fig, ax = plt.subplots(figsize=(5, 5))
    edges = np.linspace(0, 1, 11)
    for label, p in curves.items():
        index = np.clip(np.digitize(p, edges[1:-1]), 0, 9)
        xs = [p[index == b].mean() for b in range(10) if (index == b).any()]
        ys = [y[index == b].mean() for b in range(10) if (index == b).any()]
        ax.plot(xs, ys, marker="o", label=label)
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set(xlabel="mean predicted probability", ylabel="observed delay rate", title="Calibration, test days")
    ax.legend(loc="upper left")
    fig.savefig(folder / "calibration.png", dpi=110, bbox_inches="tight")
    names.append("calibration.png")
    plt.close("all")
    return names


def plot_importance(importance: list[dict[str, Any]], folder: Path, top: int = 15) -> str:
    """The `top` inputs by AUC drop when shuffled, with their 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = importance[:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(rows) + 1.2))
    means = [r["auc_drop"] for r in rows]
    errors = [[r["auc_drop"] - r["ci_low"] for r in rows], [r["ci_high"] - r["auc_drop"] for r in rows]]
    ax.barh([r["feature"] for r in rows], means, xerr=errors, color="#4c72b0")
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set(xlabel="ROC-AUC drop when shuffled (95 % interval)", title="Permutation importance, test days")
    fig.savefig(folder / "importance.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "importance.png"


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_report(summary: dict[str, Any], plots: list[str]) -> str:
    """The report page; every value is escaped by Jinja2's autoescape."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    environment.filters["number"] = _number
    return environment.get_template("report.html.j2").render(summary=summary, plots=plots)


def write_report(folder: Path, summary: dict[str, Any], plots: list[str]) -> None:
    (folder / "index.html").write_text(render_report(summary, plots))
