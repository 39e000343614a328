"""The ML Ops view inside the Airflow UI: runs, model versions, deployments, validations, drift and alerts.

Registers the view's FastAPI app (`include/mlops/app.py`, behind Airflow's own auth) at `/mlops`, and
links it as "ML Ops" in the navigation and as a tab on every DAG (that DAG's runs and products).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from include.mlops.app import app
from include.mlops.views import PREFIX


class NightshiftMlopsPlugin(AirflowPlugin):
    name = "nightshift_mlops"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "nightshift ML Ops"}]  # noqa: RUF012
    external_views = [  # noqa: RUF012
        {"name": "ML Ops", "href": f"{PREFIX}/deployments", "destination": "nav", "url_route": "mlops",
         "nav_top_level": True, "icon": f"{PREFIX}/icon.svg"},
        {"name": "ML Ops", "href": f"{PREFIX}/runs?dag_id={{DAG_ID}}", "destination": "dag", "url_route": "mlops-dag"},
    ]  # fmt: skip
