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
    assert "8 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("include/trainer/leak.py", "from include.core import config", "training image's package imports only"),
        ("include/mlops/leak.py", "from include.deploy import steps", "imports no stage's steps"),
        ("include/ingest/leak.py", "from include.monitor import steps", "only earlier stages"),
        ("include/predict/leak.py", "import tensorflow", "prediction service calls serving over REST"),
        ("include/predict/leak2.py", "from include.deploy import steps", "prediction service calls serving over REST"),
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


@pytest.mark.slow  # imports TensorFlow in a fresh process
def test_the_training_image_runs_from_what_its_dockerfile_copies(tmp_path: Path) -> None:
    """Only the files the Dockerfile COPYs of include/, on an empty path: every trainer module imports."""
    dockerfile = (ROOT / "docker" / "train.Dockerfile").read_text().splitlines()
    copied = [
        line.split()[1] for line in dockerfile if line.startswith("COPY ") and line.split()[1].startswith("include")
    ]
    assert sorted(copied) == ["include/__init__.py", "include/contract/", "include/trainer/"]
    for source in copied:
        if source.endswith("/"):
            shutil.copytree(ROOT / source, tmp_path / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, tmp_path / source)
    modules = sorted(f"include.trainer.{p.stem}" for p in (tmp_path / "include" / "trainer").glob("*.py")
                     if p.stem not in ("__init__", "__main__"))  # fmt: skip
    assert "include.trainer.model" in modules
    probe = f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; print(sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(tmp_path),
                                 "TF_CPP_MIN_LOG_LEVEL": "3"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = result.stdout.strip().splitlines()[-1]
    assert "'airflow'" not in loaded
    assert "'feast'" not in loaded
    help_text = subprocess.run([sys.executable, "-m", "include.trainer", "--help"], cwd=tmp_path, text=True,
                               capture_output=True, timeout=120, env={"PYTHONPATH": str(tmp_path)})  # fmt: skip
    assert help_text.returncode == 0, help_text.stderr
    assert "{tune,evaluate}" in help_text.stdout
