"""The import-linter contracts hold on the tree, and breaking one on purpose is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=120,
                          env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(tree)})  # fmt: skip


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "include", tmp_path / "include", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        ROOT / "feature_repo", tmp_path / "feature_repo", ignore=shutil.ignore_patterns("__pycache__", "data")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("include/trainer/leak.py", "from include.core import config", "training image's package imports only"),
        ("include/mlops/leak.py", "from include.deploy import steps", "imports no stage's steps"),
        ("include/ingest/leak.py", "from include.monitor import steps", "only earlier stages"),
        ("include/contract/leak.py", "import airflow", "data contract imports nothing"),
        ("feature_repo/leak.py", "from include.core import lake", "Feast's definitions depend on"),
    ],
)
def test_a_broken_contract_fails_the_check(tree: Path, module: str, line: str, contract: str) -> None:
    (tree / module).write_text(f"{line}  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0
    broken = [row for row in result.stdout.splitlines() if "BROKEN" in row or contract in row]
    assert any(contract in row for row in broken), result.stdout


def test_a_cycle_between_sibling_modules_fails_the_check(tree: Path) -> None:
    (tree / "include/trainer/model.py").write_text(
        (tree / "include/trainer/model.py").read_text() + "\nfrom include.trainer import evaluation  # noqa\n"
    )
    result = _lint(tree)
    assert result.returncode != 0
    assert "No import cycles" in result.stdout
