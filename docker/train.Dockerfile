# The training entry point (`python -m include.trainer`) on a TensorFlow GPU base. The image holds only
# the trainer package and the data contract it imports: nothing of Airflow, Feast or the other stages.
# Build from the repo root: docker build -f docker/train.Dockerfile -t nightshift-train .
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /opt/nightshift

# The base image ships TensorFlow with CUDA; the rest comes at the lock file's versions.
COPY constraints.txt ./
RUN pip install --no-deps keras==3.15.1 \
    && pip install -c constraints.txt keras-tuner==1.4.8 tensorboard==2.21.0 scikit-learn==1.9.1 \
       matplotlib==3.11.2 pandas==2.3.3 pyarrow==26.0.1 fsspec==2026.9.0 s3fs==2026.9.0 jinja2==3.1.6

COPY include/__init__.py include/
COPY include/contract/ include/contract/
COPY include/trainer/ include/trainer/

RUN useradd --create-home --uid 1000 trainer
USER 1000

ENTRYPOINT ["python", "-m", "include.trainer"]
