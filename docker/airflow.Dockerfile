# nightshift's Airflow image: every Airflow component (api-server, scheduler, dag-processor, triggerer,
# workers) and the prediction service run it. The locked requirements are installed here, at build
# time, and the DAGs, plugins, stage packages, Feast repo and expectation suites are baked in, so a
# container starts without installing or mounting anything.
# Build from the repo root: docker build -f docker/airflow.Dockerfile -t nightshift-airflow:<tag> .
FROM apache/airflow:3.3.2-python3.11

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONPATH=/opt/nightshift \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/nightshift/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/nightshift/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

WORKDIR /opt/nightshift

# As the image's documentation asks: pip runs as the airflow user, and apache-airflow stays pinned at the
# image's own version (requirements.txt pins apache-airflow==3.3.2; constraints.txt locks the rest).
COPY --chown=airflow:0 requirements.txt constraints.txt ./
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt

COPY --chown=airflow:0 dags/ dags/
COPY --chown=airflow:0 plugins/ plugins/
COPY --chown=airflow:0 include/ include/
COPY --chown=airflow:0 feature_repo/ feature_repo/
COPY --chown=airflow:0 expectations/ expectations/
COPY --chown=airflow:0 bin/ bin/
COPY --chown=airflow:0 airflow_settings.yaml ./

# The folders compose's volumes mount (a new named volume takes the folder's owner): nightshift's state,
# the file lake, and the serving base path, which TF Serving mounts at /models too.
USER 0
RUN mkdir -p /opt/airflow/nightshift /opt/airflow/lake /models \
    && chown 50000:0 /opt/airflow/nightshift /opt/airflow/lake /models

# The base image's unprivileged user (uid 50000, group 0, as OpenShift-style random uids need).
USER 50000
