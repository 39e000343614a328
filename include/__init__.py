"""nightshift: the logic behind the Airflow DAGs (DAG files only wire these functions)."""
