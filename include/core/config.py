"""Every setting nightshift reads, in one place, from the environment.

Nothing here touches disk or network: `load_settings()` only reads variables, so importing this
module is free. Processes that need a database or a lake call the explicit `setup_*` helpers
elsewhere.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from include.contract.training import ENSEMBLE_METHODS, TUNERS, WARM_STARTS

PROJECT_ROOT = Path(__file__).resolve().parents[2]

SOURCES = ("replay", "landing")
# The lake zone of Feast's offline sources: one folder of daily Parquet files per feature view.
FEATURES_ZONE = "features"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


def _date(env: Mapping[str, str], key: str, default: str) -> dt.date:
    raw = env.get(key, default)
    try:
        return dt.date.fromisoformat(raw)
    except ValueError as err:
        raise ConfigError(f"{key}={raw!r} is not a date; use YYYY-MM-DD") from err


def _optional_date(env: Mapping[str, str], key: str) -> dt.date | None:
    return _date(env, key, "") if env.get(key) else None


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, str(default))
    try:
        return int(raw)
    except ValueError as err:
        raise ConfigError(f"{key}={raw!r} is not an integer") from err


def _share(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key, str(default))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise ConfigError(f"{key}={raw!r} is not a share between 0 and 1")
    return value


@dataclass(frozen=True)
class Settings:
    """Resolved configuration of one nightshift process."""

    home: Path
    local_dir: Path
    lake_uri: str
    lake_conn_id: str | None
    source: str
    database_url: str | None
    feast_repo: Path
    bootstrap_start: dt.date
    bootstrap_end: dt.date
    row_count_tolerance: float
    # Training's coverage rule: a window may lack published features on at most this share of its days.
    max_missing_day_share: float
    # The replay clock (source `replay` under the scheduler): the wall-clock night `replay_start`
    # replays the 2013 day `replay_first_day`, the next night the day after, and so on.
    replay_start: dt.date | None
    replay_first_day: dt.date | None
    serving_dir: Path
    serving_url: str
    model_name: str
    serving_model_base: str
    # Feast's online store: `postgres` (the one Postgres, the default) or `redis` at `redis_address`.
    online_store: str
    redis_address: str
    # Serving replicas (`NIGHTSHIFT_SERVING_REPLICAS`, comma-separated URLs) that all read the same
    # `models.config`: a deploy is done only once every one has the version and its labels, and the
    # prediction service balances across them. Empty: the one server at `serving_url`.
    serving_replicas: tuple[str, ...] = ()

    @property
    def replica_urls(self) -> tuple[str, ...]:
        """Every serving replica a deploy must reach, and the prediction service balances across."""
        return self.serving_replicas or (self.serving_url,)

    @property
    def models_config(self) -> Path:
        """The `models.config` TF Serving polls (`--model_config_file`)."""
        return self.serving_dir / "models.config"

    @property
    def model_dir(self) -> Path:
        """Where this process writes `<version>/` SavedModels of the served model."""
        return self.serving_dir / self.model_name

    def feature_source_glob(self, view: str) -> str:
        """Glob of a feature view's daily files in the lake, as Feast's DuckDB offline store reads them.

        An `s3://` lake is named `s3a://` here: for `s3://` ibis would make DuckDB download its httpfs
        extension at run time, while `s3a://` goes to the lake's own fsspec filesystem, which
        `include/core/feast.py` registers with DuckDB (both are S3 to s3fs)."""
        folder = f"{self.lake_uri}/{FEATURES_ZONE}/{view.removesuffix('_fv')}"
        if folder.startswith("s3://"):
            folder = "s3a://" + folder.removeprefix("s3://")
        return folder.removeprefix("file://") + "/*.parquet"

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError(
                "NIGHTSHIFT_DATABASE_URL is not set; run through `make demo` / `bin/nightshift`, "
                "or export DATABASE_URL=postgresql://user@host:5432/db"
            )
        return self.database_url


ONLINE_STORES = ("postgres", "redis")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `env` (default: `os.environ`), validating each one."""
    env = os.environ if env is None else env
    home = Path(env.get("NIGHTSHIFT_HOME", str(PROJECT_ROOT))).resolve()
    source = env.get("NIGHTSHIFT_SOURCE", "replay")
    if source not in SOURCES:
        raise ConfigError(f"NIGHTSHIFT_SOURCE={source!r}; choose one of {', '.join(SOURCES)}")
    # Embedded state: Postgres data, Airflow home, the default lake, the demo summary.
    local_dir = Path(env.get("NIGHTSHIFT_LOCAL_DIR", str(home / ".local"))).resolve()
    lake_uri = env.get("NIGHTSHIFT_LAKE", (local_dir / "lake").as_uri())
    if "://" not in lake_uri:
        lake_uri = Path(lake_uri).resolve().as_uri()
    start = _date(env, "NIGHTSHIFT_BOOTSTRAP_START", "2013-01-01")
    end = _date(env, "NIGHTSHIFT_BOOTSTRAP_END", "2013-03-31")
    if end < start:
        raise ConfigError(f"NIGHTSHIFT_BOOTSTRAP_END {end} is before NIGHTSHIFT_BOOTSTRAP_START {start}")
    serving_dir = Path(env.get("NIGHTSHIFT_SERVING_DIR", str(local_dir / "serving"))).resolve()
    model_name = env.get("NIGHTSHIFT_MODEL_NAME", "flight_delay")
    if not model_name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"NIGHTSHIFT_MODEL_NAME={model_name!r}: use letters, digits, '_' and '-'")
    online_store = env.get("NIGHTSHIFT_ONLINE_STORE", "postgres")
    if online_store not in ONLINE_STORES:
        raise ConfigError(f"NIGHTSHIFT_ONLINE_STORE={online_store!r}; choose one of {', '.join(ONLINE_STORES)}")
    return Settings(
        home=home,
        local_dir=local_dir,
        lake_uri=lake_uri.rstrip("/"),
        lake_conn_id=env.get("NIGHTSHIFT_LAKE_CONN_ID") or None,
        source=source,
        database_url=env.get("NIGHTSHIFT_DATABASE_URL") or env.get("DATABASE_URL") or None,
        feast_repo=Path(env.get("NIGHTSHIFT_FEAST_REPO", str(home / "feature_repo"))),
        bootstrap_start=start,
        bootstrap_end=end,
        row_count_tolerance=_int(env, "NIGHTSHIFT_ROW_COUNT_TOLERANCE_PCT", 50) / 100,
        max_missing_day_share=_share(env, "NIGHTSHIFT_MAX_MISSING_DAY_SHARE", 0.05),
        replay_start=_date(env, "NIGHTSHIFT_REPLAY_START", "") if env.get("NIGHTSHIFT_REPLAY_START") else None,
        replay_first_day=_date(env, "NIGHTSHIFT_REPLAY_FIRST_DAY", "")
        if env.get("NIGHTSHIFT_REPLAY_FIRST_DAY")
        else None,
        serving_dir=serving_dir,
        serving_url=env.get("NIGHTSHIFT_SERVING_URL", "http://127.0.0.1:8501").rstrip("/"),
        model_name=model_name,
        # The model's base path as the server sees it (a container mounts serving_dir elsewhere); with an
        # s3:// lake, the lake's serving/ prefix, which TF Serving reads natively (include/deploy/published.py).
        serving_model_base=env.get("NIGHTSHIFT_SERVING_MODEL_BASE_PATH")
        or (f"{lake_uri}/serving/{model_name}" if lake_uri.startswith("s3://") else str(serving_dir / model_name)),
        online_store=online_store,
        redis_address=env.get("NIGHTSHIFT_REDIS", "127.0.0.1:6379"),
        serving_replicas=_urls(env, "NIGHTSHIFT_SERVING_REPLICAS"),
    )


def _urls(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list of distinct http(s)://host:port URLs, each one or, prefixed `dns:`, every
    address its host name resolves to (a Kubernetes headless Service: one per pod); empty when unset."""
    urls = tuple(u.strip().rstrip("/") for u in env.get(name, "").split(",") if u.strip())
    for url in urls:
        parts = urlsplit(url.removeprefix("dns:"))
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(f"{name}: {url!r} is not an http(s)://host:port URL (or dns:http://name:port)")
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{name} names a replica twice: {', '.join(urls)}")
    return urls


def deadlines_enabled(env: Mapping[str, str] | None = None) -> bool:
    """False only for `dag.test()` runs: Airflow 3.3.2's dag.test crashes pruning the deadlines of a
    successful run (its DAG holds serialized alerts, not their ids), leaving the run `running`."""
    env = os.environ if env is None else env
    return env.get("NIGHTSHIFT_DEADLINES", "on") != "off"


def chain_cutoff(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    env = os.environ if env is None else env
    raw = env.get("NIGHTSHIFT_CHAIN_DEADLINE_UTC", "06:00")
    try:
        hour, minute = (int(part) for part in raw.split(":"))
        if not (0 <= hour < 24 and 0 <= minute < 60):
            raise ValueError
    except ValueError as err:
        raise ConfigError(f"NIGHTSHIFT_CHAIN_DEADLINE_UTC={raw!r} is not an HH:MM time of day") from err
    return hour, minute


def ingest_deadline_hours(env: Mapping[str, str] | None = None) -> float:
    env = os.environ if env is None else env
    raw = env.get("NIGHTSHIFT_INGEST_DEADLINE_HOURS", "2")
    try:
        return float(raw)
    except ValueError as err:
        raise ConfigError(f"NIGHTSHIFT_INGEST_DEADLINE_HOURS={raw!r} is not a number of hours") from err


# Timeouts: how long a task may run before Airflow fails it (its `execution_timeout`, then retries
# with backoff), in minutes. Every task gets its DAG's default; the long steps get their own. The most
# specific setting wins: NIGHTSHIFT_TIMEOUT_<DAG>_<TASK>_MIN, the step's built-in below,
# NIGHTSHIFT_TIMEOUT_<DAG>_MIN, NIGHTSHIFT_TIMEOUT_MIN, TASK_TIMEOUT_MIN. <DAG> is the DAG id without
# `nightshift_`, upper case: NIGHTSHIFT_TIMEOUT_TRAIN_TUNE_MIN=480.
TASK_TIMEOUT_MIN = 60.0  # a 400-day manual range of ingest or monitor takes well under this
LONG_TASK_TIMEOUT_MIN = {
    ("nightshift_ingest", "materialize"): 120.0,  # a long range into the Postgres online store
    ("nightshift_train", "tune"): 360.0,  # the form's largest tuning budgets
    ("nightshift_train", "evaluate"): 90.0,  # ensemble, baseline and champion on the test days
    ("nightshift_backtest", "run_window"): 480.0,  # one window's dataset, tune and evaluate
    ("nightshift_serving_health", "check"): 4.0,  # shorter: the next check is due 5 minutes later
}
MAX_TIMEOUT_MIN = 7 * 24 * 60.0


def task_timeout(
    dag_id: str | None = None, task_id: str | None = None, env: Mapping[str, str] | None = None
) -> dt.timedelta:
    """The `execution_timeout` of `task_id` of `dag_id`; without a task, the DAG's default (cheap: parse time)."""
    env = os.environ if env is None else env
    dag = (dag_id or "").removeprefix("nightshift_").upper()
    step_key = f"NIGHTSHIFT_TIMEOUT_{dag}_{(task_id or '').upper()}_MIN"
    if dag and task_id and step_key in env:
        return _timeout_minutes(env, step_key)
    if (dag_id, task_id) in LONG_TASK_TIMEOUT_MIN:
        return dt.timedelta(minutes=LONG_TASK_TIMEOUT_MIN[(str(dag_id), str(task_id))])
    for key in [f"NIGHTSHIFT_TIMEOUT_{dag}_MIN"] * bool(dag) + ["NIGHTSHIFT_TIMEOUT_MIN"]:
        if key in env:
            return _timeout_minutes(env, key)
    return dt.timedelta(minutes=TASK_TIMEOUT_MIN)


def _timeout_minutes(env: Mapping[str, str], key: str) -> dt.timedelta:
    raw = env[key]
    try:
        minutes = float(raw)
    except ValueError:
        minutes = 0.0
    if not 0 < minutes <= MAX_TIMEOUT_MIN:
        raise ConfigError(f"{key}={raw!r} is not a number of minutes between 0 and {MAX_TIMEOUT_MIN:g}")
    return dt.timedelta(minutes=minutes)


@dataclass(frozen=True)
class DeployPolicy:
    """How `nightshift_deploy` judges a new version; each field is `NIGHTSHIFT_DEPLOY_<NAME>`."""

    infra_requests: int = 32  # real recent rows replayed against the new version
    infra_tolerance: float = 1e-4  # max |served - offline| prediction difference
    warmup_records: int = 8
    load_timeout_s: float = 120.0  # for a version to become AVAILABLE after models.config changes
    sandbox_timeout_s: float = 180.0  # infra validation's sandbox server is killed after this, whatever it does
    canary_requests: int = 100  # single-row requests sent to each of canary and stable (at least 50)
    max_error_rate: float = 0.01
    max_latency_ratio: float = 3.0  # canary p50 and p90 <= ratio * stable's + latency_slack_ms
    latency_slack_ms: float = 25.0
    max_prediction_shift: float = 0.10  # |mean canary - mean stable| prediction on the same rows
    canary_percent: int = 10  # share of the prediction service's flights sent to `canary`, sticky by flight key
    # The canary serves live traffic this long before its verdict (0: judged on replayed requests only). Live
    # traffic judges it when each arm answered at least canary_min_live flights in that time; keep the bake
    # above twice NIGHTSHIFT_PREDICT_LOG_FLUSH_S, since the verdict reads the served-prediction log.
    canary_bake_s: float = 0.0
    canary_min_live: int = 200
    grace_hours: float = 24.0  # a replaced version stays loaded this long, for an instant rollback
    lock_timeout_s: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeployPolicy:
        env = os.environ if env is None else env
        for old, new in RENAMED_DEPLOY_SETTINGS.items():
            if old in env:
                raise ConfigError(f"{old} is now {new} (the canary judges p50 and p90, not p99); rename it")
        policy = cls(**env_overrides(cls(), "NIGHTSHIFT_DEPLOY_", env))
        if not 0 <= policy.canary_percent <= 100:
            raise ConfigError(f"NIGHTSHIFT_DEPLOY_CANARY_PERCENT={policy.canary_percent} is not between 0 and 100")
        return policy


@dataclass(frozen=True)
class NightlyTraining:
    """The nightly training's window and tuning budget: the train form's defaults, so every scheduled
    run uses them, and `make demo` trains with them too. Each field is `NIGHTSHIFT_NIGHTLY_<NAME>`.
    The defaults fit one night of the chain in 8 minutes on 2 CPU cores; on a GPU raise epochs,
    max_trials (with tuner=bayesian|random|grid|evolution) and ensemble_size."""

    train_days: int = 60
    test_days: int = 7
    tuner: str = "hyperband"
    max_trials: int = 6
    epochs: int = 4
    ensemble_size: int = 2
    ensemble_method: str = "auto"
    warm_start: str = "both"
    # Gradient boosting, compiled to TensorFlow ops, as one more member: it lifts every backtest window's AUC
    # but worsens two windows' calibration (README, "The model against gradient boosting"), so it is opt-in.
    tree_member: bool = False
    seed: int = 7

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NightlyTraining:
        budget = cls(**env_overrides(cls(), "NIGHTSHIFT_NIGHTLY_", env))
        if budget.tuner not in TUNERS:
            raise ConfigError(f"NIGHTSHIFT_NIGHTLY_TUNER={budget.tuner!r}; choose one of {', '.join(TUNERS)}")
        if budget.ensemble_method not in ENSEMBLE_METHODS:
            raise ConfigError(f"NIGHTSHIFT_NIGHTLY_ENSEMBLE_METHOD={budget.ensemble_method!r}; "
                              f"choose one of {', '.join(ENSEMBLE_METHODS)}")  # fmt: skip
        if budget.warm_start not in WARM_STARTS:
            raise ConfigError(f"NIGHTSHIFT_NIGHTLY_WARM_START={budget.warm_start!r}; "
                              f"choose one of {', '.join(WARM_STARTS)}")  # fmt: skip
        if min(budget.train_days - 6, budget.test_days, budget.max_trials, budget.epochs, budget.ensemble_size) < 1:
            raise ConfigError(f"the nightly training budget {budget} needs train_days >= 7 and the rest >= 1")
        return budget


@dataclass(frozen=True)
class LandingLimits:
    """What one file dropped under `landing/` may be; each field is `NIGHTSHIFT_LANDING_<NAME>`."""

    max_file_mb: int = 2048  # a bigger file is refused before it is read (a day is ~0.1 MB)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LandingLimits:
        limits = cls(**env_overrides(cls(), "NIGHTSHIFT_LANDING_", env))
        if limits.max_file_mb < 1:
            raise ConfigError(f"NIGHTSHIFT_LANDING_MAX_FILE_MB={limits.max_file_mb} must be at least 1")
        return limits


@dataclass(frozen=True)
class PredictService:
    """The prediction service for callers (`bin/nightshift predict`); each field is `NIGHTSHIFT_PREDICT_<NAME>`."""

    host: str = "127.0.0.1"  # loopback unless configured otherwise
    port: int = 8600
    requests_per_minute: int = 12000  # a new API key's rate limit, unless `predict-keys create --rate` says
    max_flights: int = 1000  # flights in one request
    max_body_bytes: int = 1_048_576  # a larger request body is refused with 413 before it is read whole
    log_batch_rows: int = 5000  # the served-prediction log writes a Parquet file at this many rows…
    log_flush_s: float = 10.0  # …or this often, whichever comes first
    log_served: int = 1  # 0: no served-prediction log (only to measure what the log costs)
    state_ttl_s: float = 2.0  # how long the service trusts what it read of labels, split and keys
    serving_timeout_s: float = 5.0
    # Requests that arrive while a batch is scored share the next one (one online read, one serving call):
    batch_max_flights: int = 256  # at most this many flights in a batch (a larger request goes alone)
    batches_in_flight: int = 2  # batches scored at once (one can read features while another is served)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PredictService:
        service = cls(**env_overrides(cls(), "NIGHTSHIFT_PREDICT_", env))
        if not 0 <= service.port <= 65535:
            raise ConfigError(f"NIGHTSHIFT_PREDICT_PORT={service.port} is not a port")
        if min(service.requests_per_minute, service.max_flights, service.log_batch_rows, service.batch_max_flights,
               service.batches_in_flight) < 1:  # fmt: skip
            raise ConfigError(f"the prediction service's limits {service} must be at least 1")
        return service


@dataclass(frozen=True)
class ServingHealth:
    """The 5-minute health check of serving and the prediction service; each field is
    `NIGHTSHIFT_HEALTH_<NAME>`."""

    window_s: float = 300.0  # the served traffic each check judges: the last 5 minutes
    max_error_rate: float = 0.05  # of an arm's flights, when it served at least min_requests
    min_requests: int = 20
    probe_timeout_s: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingHealth:
        return cls(**env_overrides(cls(), "NIGHTSHIFT_HEALTH_", env))


# Settings of an earlier release: refused with their new name rather than silently ignored.
RENAMED_DEPLOY_SETTINGS = {
    "NIGHTSHIFT_DEPLOY_MAX_P99_RATIO": "NIGHTSHIFT_DEPLOY_MAX_LATENCY_RATIO",
    "NIGHTSHIFT_DEPLOY_P99_SLACK_MS": "NIGHTSHIFT_DEPLOY_LATENCY_SLACK_MS",
}


def tune_shards(env: Mapping[str, str] | None = None) -> int:
    """`NIGHTSHIFT_TUNE_SHARDS`: how many pods (or subprocesses) tune in parallel; read at parse time, cheap."""
    raw = (os.environ if env is None else env).get("NIGHTSHIFT_TUNE_SHARDS", "1")
    try:
        return max(1, int(raw))
    except ValueError as err:
        raise ConfigError(f"NIGHTSHIFT_TUNE_SHARDS={raw!r} is not a whole number") from err


EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}


@dataclass(frozen=True)
class Executor:
    """Which Airflow executor runs the tasks: `NIGHTSHIFT_EXECUTOR` = local (LocalExecutor, the default) or
    celery (CeleryExecutor: the broker is Redis, the result backend the same Postgres). The Celery profile's
    workers are each `NIGHTSHIFT_CELERY_<NAME>`: `default_workers` workers serve Airflow's default queue,
    and one worker serves `training_queue`, where the tune and evaluate tasks go, with one slot per tuning
    shard so the shards run in parallel."""

    kind: str = "local"
    broker_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)  # may hold Redis's password
    default_workers: int = 2
    default_concurrency: int = 2  # task slots of each default worker
    training_queue: str = "training"

    @property
    def airflow_name(self) -> str:
        return EXECUTORS[self.kind]

    @property
    def celery(self) -> bool:
        return self.kind == "celery"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Executor:
        env = os.environ if env is None else env
        kind = env.get("NIGHTSHIFT_EXECUTOR", "local")
        if kind not in EXECUTORS:
            raise ConfigError(f"NIGHTSHIFT_EXECUTOR={kind!r}; choose one of {', '.join(EXECUTORS)}")
        executor = cls(kind, **{k: v for k, v in env_overrides(cls(), "NIGHTSHIFT_CELERY_", env).items()
                                if k != "kind"})  # fmt: skip
        if min(executor.default_workers, executor.default_concurrency) < 1:
            raise ConfigError(f"NIGHTSHIFT_CELERY_DEFAULT_WORKERS={executor.default_workers} and "
                              f"NIGHTSHIFT_CELERY_DEFAULT_CONCURRENCY={executor.default_concurrency}: the Celery "
                              "profile needs at least one default worker with one slot")  # fmt: skip
        if not executor.broker_url.startswith(("redis://", "rediss://")):
            raise ConfigError(f"NIGHTSHIFT_CELERY_BROKER_URL: the broker is Redis (redis://host:6379/0), not "
                              f"{executor.broker_url.split('://')[0]}://")  # fmt: skip
        return executor

    def workers(self, env: Mapping[str, str] | None = None) -> dict[str, list[str]]:
        """Each Celery worker's name → its `airflow celery worker` arguments (none under LocalExecutor)."""
        if not self.celery:
            return {}
        common = ["--without-mingle", "--without-gossip", "--skip-serve-logs"]
        workers = {f"worker-default-{i}": ["celery", "worker", "--queues", "default", "--concurrency",
                                             str(self.default_concurrency), "--celery-hostname",
                                             f"default-{i}@%h", *common]
                   for i in range(1, self.default_workers + 1)}  # fmt: skip
        workers["worker-training"] = ["celery", "worker", "--queues", self.training_queue, "--concurrency",
                                      str(tune_shards(env)), "--celery-hostname", "training@%h", *common]  # fmt: skip
        return workers


def _parse(kind: type, raw: str) -> Any:
    """An environment value as the field's type; a bool is true/false, yes/no, on/off or 1/0."""
    if kind is bool:
        word = raw.strip().lower()
        if word not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            raise ValueError(raw)
        return word in ("true", "yes", "on", "1")
    return kind(raw)


def env_overrides(defaults: Any, prefix: str, env: Mapping[str, str] | None) -> dict[str, Any]:
    """Each field of the `defaults` dataclass, overridden by `<prefix><FIELD>` when set."""
    env = os.environ if env is None else env
    values = {}
    for name, default in asdict(defaults).items():
        key = f"{prefix}{name.upper()}"
        raw = env.get(key)
        try:
            values[name] = default if raw is None else _parse(type(default), raw)
        except ValueError as err:
            raise ConfigError(f"{key}={raw!r} is not a {type(default).__name__}") from err
    return values


@dataclass(frozen=True)
class MonitorPolicy:
    """When monitoring alerts and asks for retraining; each field is `NIGHTSHIFT_MONITOR_<NAME>`."""

    max_drift_share: float = 0.3  # share of the model's features drifted on a day (reported)
    # A drift warning: the drifted inputs carry more than this share of the version's permutation importance.
    max_weighted_drift: float = 0.2
    # Per feature: Wasserstein (normed) / Jensen-Shannon distance. A floor: an input whose test days
    # differ more among themselves gets that as its limit (monitor.drift_thresholds).
    feature_drift_threshold: float = 0.1
    # The day's ROC-AUC below the version's test AUC; at least as far as its worst test day was.
    max_auc_drop: float = 0.05
    max_prediction_rate_shift: float = 0.10  # |mean prediction today - on the reference|
    persist_days: int = 3  # drift on this many consecutive days requests retraining
    min_rows: int = 200  # fewer scored flights than this: quality is reported but not judged
    batch_size: int = 256  # rows per predict request
    dedup_hours: float = 24.0  # the same alert (kind + key) at most once in this window
    # Served predictions judge a day when the service answered at least min_rows of its flights; then a
    # share of them above this whose served inputs differ from the offline point-in-time ones is skew.
    max_skew_share: float = 0.01
    # ... and only when what it served covers this share of the day's labelled flights: a few callers' flights
    # are not the day, so below it the day is scored offline, whole, as before.
    min_served_share: float = 0.5
    # Reported but never alerted on: one day's calendar is always unlike a multi-day reference.
    drift_exempt: str = "day_of_week,month"

    @property
    def exempt_features(self) -> set[str]:
        return {f.strip() for f in self.drift_exempt.split(",") if f.strip()}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MonitorPolicy:
        return cls(**env_overrides(cls(), "NIGHTSHIFT_MONITOR_", env))


@dataclass(frozen=True)
class AlertOutbox:
    """How alerts wait for delivery (include.core.alerts); each field is `NIGHTSHIFT_ALERTS_<NAME>`."""

    # Where alerts wait while Postgres is unreachable, replayed into it later; "" = {local_dir}/alerts/spool.jsonl.
    spool: str = ""
    lease_s: float = 120.0  # a deliverer's claim on an alert: longer than its slowest send, mail and webhook
    give_up_hours: float = 24.0  # a channel still failing this long after the alert stops being retried

    def spool_file(self, local_dir: Path) -> Path:
        return Path(self.spool) if self.spool else local_dir / "alerts" / "spool.jsonl"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AlertOutbox:
        outbox = cls(**env_overrides(cls(), "NIGHTSHIFT_ALERTS_", env))
        if outbox.lease_s <= 0:
            raise ConfigError(f"NIGHTSHIFT_ALERTS_LEASE_S={outbox.lease_s} must be more than 0 seconds")
        return outbox
