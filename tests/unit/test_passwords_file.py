"""The UI users' passwords file is private from its first byte (issue 14, item 1)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from include.core.access import USERS
from include.ops import auth


def test_the_passwords_file_is_0600_without_any_chmod_even_under_umask_0(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)  # a later chmod must not be what protects it
    old = os.umask(0)
    try:
        path = auth.ensure_passwords(tmp_path / "airflow" / "passwords.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(json.loads(path.read_text())) == set(USERS)


def test_no_byte_is_written_before_the_file_is_private(tmp_path, monkeypatch) -> None:
    modes: list[int] = []
    fdopen = os.fdopen

    def watched(fd: int, *args, **kwargs):
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", watched)
    auth.ensure_passwords(tmp_path / "passwords.json")
    assert modes == [0o600]
    assert [p.name for p in tmp_path.iterdir()] == ["passwords.json"]  # no temp file left behind


def test_existing_passwords_are_kept_and_missing_users_added(tmp_path) -> None:
    path = tmp_path / "passwords.json"
    path.write_text(json.dumps({"admin": "kept"}))
    path.chmod(0o644)
    passwords = json.loads(auth.ensure_passwords(path).read_text())
    assert passwords["admin"] == "kept"
    assert set(passwords) == set(USERS)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("users", [USERS])
def test_every_user_has_a_role_airflow_knows_or_the_table_defines(users) -> None:
    from include.core.access import ROLE_PERMISSIONS

    builtin = {"Admin", "Viewer"}
    assert {role for roles in users.values() for role in roles} <= builtin | set(ROLE_PERMISSIONS)
