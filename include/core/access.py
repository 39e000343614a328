"""Who may do what: the one table of roles and DAG permissions, enforced by Airflow's FAB auth manager.

| role (users)          | reads    | triggers                                  | clears task instances |
|-----------------------|----------|-------------------------------------------|-----------------------|
| `Viewer` (viewer)     | all DAGs and the ML Ops view (`Reader`) | nothing         | no                    |
| `Analyst` (analyst)   | all DAGs | ingest, train, predict_batch, backtest    | no                    |
| `Oncall` (oncall)     | all DAGs | every nightshift DAG, nightshift_deploy too | of the DAGs it triggers |
| `Admin` (admin)       | all      | all                                       | all                   |

Airflow's REST API, its trigger form and the ML Ops view all ask the auth manager, which reads the
global permissions of `ROLE_PERMISSIONS` (set by `bin/nightshift prepare`) and each DAG's
`access_control` (synced by the dag-processor when it parses the DAG). Triggering needs both "edit"
on the DAG and "create" on its runs; clearing needs "edit" on the DAG and on task instances.
"""

from __future__ import annotations

from typing import Any

from include.core.assets import BACKTEST_DAG, DEPLOY_DAG, INGEST_DAG, MONITOR_DAG, PREDICT_BATCH_DAG, TRAIN_DAG

ANALYST, ONCALL, READER = "Analyst", "Oncall", "Reader"

# The DAGs each role may trigger (Admin may trigger all; Viewer none).
TRIGGERS: dict[str, tuple[str, ...]] = {
    INGEST_DAG: (ANALYST, ONCALL),
    TRAIN_DAG: (ANALYST, ONCALL),
    PREDICT_BATCH_DAG: (ANALYST, ONCALL),
    BACKTEST_DAG: (ANALYST, ONCALL),
    MONITOR_DAG: (ONCALL,),
    DEPLOY_DAG: (ONCALL,),
}

# Global (not per-DAG) permissions of the custom roles, on top of FAB's built-in Viewer role, which
# every nightshift user but admin also holds. Per-DAG "edit" is what limits them to their DAGs.
ROLE_PERMISSIONS: dict[str, list[tuple[str, str]]] = {
    READER: [("can_read", "Plugins")],  # the ML Ops view (FAB's Viewer cannot open plugin views)
    ANALYST: [],
    ONCALL: [
        ("can_edit", "Task Instances"),
        ("can_delete", "Task Instances"),
        ("can_edit", "DAG Runs"),
        ("can_delete", "DAG Runs"),
    ],
}

# The UI users `make airflow` creates, and their roles.
USERS: dict[str, tuple[str, ...]] = {
    "admin": ("Admin",),
    "analyst": ("Viewer", READER, ANALYST),
    "oncall": ("Viewer", READER, ANALYST, ONCALL),
    "viewer": ("Viewer", READER),
}


def access_control(dag_id: str) -> dict[str, dict[str, set[str]]]:
    """A DAG's `access_control`: its triggering roles may edit it and create its runs."""
    return {
        role: {"DAGs": {"can_read", "can_edit"}, "DAG Runs": {"can_read", "can_create"}}
        for role in TRIGGERS.get(dag_id, ())
    }


def may_trigger(roles: Any, dag_id: str) -> bool:
    """What the table says (for tests and docs; enforcement is Airflow's)."""
    names = set(roles)
    return "Admin" in names or bool(names & set(TRIGGERS.get(dag_id, ())))
