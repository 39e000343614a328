"""Deploy a blessed model to TensorFlow Serving: push → infra validation → canary → promote, or roll back.

Runs when training blesses a candidate (the `model_candidate` Asset): the registry must allow the move
(plan), the new version is pushed if its files are the ones the gate blessed, validated in a sandbox
server of its own and then on the server, tried as `canary` next to `stable`, and promoted when it is
healthy.
On-call can run it from the form with a version and an action:

* **canary**: push, validate and label the version `canary`, then stop; `stable` keeps serving.
* **promote**: the same, then move `stable` to it (the old version stays loaded for the grace
  period, so a rollback is instant). Emits the `model_serving` Asset.
* **rollback**: move `stable` back to the version it replaced (or to the form's version).

Every change is recorded in the `deployments` table and the registry; only one deploy changes
serving at a time (the `serving_deploy` pool and a Postgres advisory lock).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task

from include.core.access import access_control
from include.core.assets import DEPLOY_DAG, MODEL_CANDIDATE, MODEL_SERVING
from include.core.dag_defaults import default_args
from include.core.deadlines import nightly_deadlines

DEFAULT_ARGS = default_args(retry_delay=timedelta(seconds=20), max_retry_delay=timedelta(minutes=5))


def _step(name: str, *args: Any) -> Any:
    """Run `include.deploy.steps.<name>`; a refusal (DeployError, a PermanentError) fails at once."""
    from include.core.config import DeployPolicy, load_settings
    from include.deploy import steps

    settings = load_settings()
    if name == "plan":
        return steps.plan(settings, *args)
    return getattr(steps, name)(settings, DeployPolicy.from_env(), *args)


@dag(
    dag_id=DEPLOY_DAG,
    access_control=access_control(DEPLOY_DAG),
    description=__doc__.partition(".")[0],
    doc_md=__doc__,
    schedule=[MODEL_CANDIDATE],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["nightshift", "deploy"],
    deadline=nightly_deadlines("the nightly deploy must finish"),
    params={
        "version": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Model version",
            description="Registry version to deploy, or to roll back to. Empty: the blessed candidate that "
            "triggered the run (else the latest blessed); for a rollback, the version stable replaced.",
            section="Deployment",
        ),
        "action": Param(
            "promote",
            type="string",
            enum=["canary", "promote", "rollback"],
            values_display={
                "canary": "Canary: validate and serve as canary, keep stable",
                "promote": "Promote: canary, then make it stable when healthy",
                "rollback": "Roll back: stable returns to the previous version",
            },
            title="Action",
            section="Deployment",
        ),
        "canary_percent": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            maximum=100,
            title="Canary traffic (%)",
            description="Share of the prediction service's flights the canary serves, sticky by flight key. "
            "Empty: NIGHTSHIFT_DEPLOY_CANARY_PERCENT (default 10).",
            section="Deployment",
        ),
    },
)
def nightshift_deploy() -> None:
    @task
    def plan(**context: Any) -> dict[str, Any]:
        from include.core.lineage import require_known_conf

        require_known_conf(context)
        events = (context.get("triggering_asset_events") or {}).get(MODEL_CANDIDATE, [])
        versions = [int(e.extra["version"]) for e in events if (e.extra or {}).get("version")]
        return _step("plan", dict(context["params"]), versions)

    @task.branch
    def choose(planned: dict[str, Any]) -> str:
        return "rollback" if planned["action"] == "rollback" else "push"

    @task
    def push(planned: dict[str, Any], **context: Any) -> dict[str, Any]:
        return _step("push", planned, context["run_id"])

    @task(pool="serving_deploy")
    def infra_validate(planned: dict[str, Any], pushed: dict[str, Any], **context: Any) -> dict[str, Any]:
        return _step("infra_validate", planned, pushed, context["run_id"])

    @task(pool="serving_deploy")
    def canary(planned: dict[str, Any], pushed: dict[str, Any], validated: dict[str, Any], **context: Any) -> dict:
        return _step("canary", planned, pushed, context["run_id"])

    @task(pool="serving_deploy", outlets=[MODEL_SERVING])
    def promote(planned: dict[str, Any], tried: dict[str, Any], **context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        if planned["action"] != "promote":
            raise AirflowSkipException("action=canary: the canary stays; promote it from the form when ready")
        promoted = _step("promote", planned, context["run_id"])
        context["outlet_events"][MODEL_SERVING].extra = promoted
        return promoted

    @task(pool="serving_deploy", outlets=[MODEL_SERVING])
    def rollback(planned: dict[str, Any], **context: Any) -> dict[str, Any]:
        rolled = _step("rollback", planned, context["run_id"])
        context["outlet_events"][MODEL_SERVING].extra = rolled
        return rolled

    @task(pool="serving_deploy", trigger_rule="none_failed_min_one_success")
    def retire(**context: Any) -> list[int]:
        return _step("retire", context["run_id"])

    planned = plan()
    pushed = push(planned)
    validated = infra_validate(planned, pushed)
    promoted = promote(planned, canary(planned, pushed, validated))
    rolled = rollback(planned)
    choose(planned) >> [pushed, rolled]
    [promoted, rolled] >> retire()


nightshift_deploy()
