"""The UI users and roles of `include.core.access`, in the FAB auth manager's tables.

`python -m include.ops.auth PASSWORDS_FILE` (run by `prepare` with Airflow's environment) creates
the custom roles with their global permissions and each DAG's permissions, and creates or updates
each user with its roles and the password from the file (hashed by FAB). Passwords never appear on a
command line or in a log.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
from pathlib import Path

from include.core.access import ROLE_PERMISSIONS, TRIGGERS, USERS, access_control


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only from the first byte (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_passwords(path: Path) -> Path:
    """A passwords file for the UI users, generated once, mode 0600 from its first byte."""
    known = json.loads(path.read_text()) if path.exists() else {}
    if set(USERS) - set(known) or not path.exists():
        known |= {user: secrets.token_urlsafe(12) for user in USERS if user not in known}
        write_private(path, json.dumps(known, indent=2))
    path.chmod(0o600)
    return path


def sync_users(passwords: dict[str, str]) -> list[str]:
    """Create the roles and users (idempotent); returns a line per user."""
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        sm.sync_roles()  # FAB's built-in roles (Admin, Op, User, Viewer, Public) and their permissions
        sm.bulk_sync_roles({"role": role, "perms": perms} for role, perms in ROLE_PERMISSIONS.items())
        # The DAGs' access_control, as the dag-processor syncs it when it parses them: from the same table,
        # so permissions hold from the first request, before any DAG has been parsed.
        for dag_id in TRIGGERS:
            sm.sync_perm_for_dag(dag_id, access_control(dag_id))
        lines = []
        for username, role_names in USERS.items():
            roles = [sm.find_role(name) for name in role_names]
            user = sm.find_user(username=username)
            if user is None:
                sm.add_user(username, username, "nightshift", f"{username}@nightshift.invalid", roles,
                            passwords[username])  # fmt: skip
                lines.append(f"created {username} ({', '.join(role_names)})")
            else:
                user.roles = roles
                sm.update_user(user)
                sm.reset_password(user.id, passwords[username])
                lines.append(f"updated {username} ({', '.join(role_names)})")
        return lines


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m include.ops.auth PASSWORDS_FILE", file=sys.stderr)
        return 2
    for line in sync_users(json.loads(Path(args[0]).read_text())):
        print(f"    {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
