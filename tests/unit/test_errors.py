"""The one table of which failures a retry can fix (`include/core/errors.py`), as the tasks use it:
bad data and crashes on the data fail at once, naming the cause; refused connections, timeouts and
a database that went away keep their retries."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa
from airflow.sdk.exceptions import AirflowFailException

from include.core.errors import PermanentError, fail_fast, is_permanent
from include.deploy.errors import DeployError
from include.ingest.collect import SourceError
from include.train.dataset import DatasetError

PERMANENT = [
    pytest.param(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), id="undecodable landing file"),
    pytest.param(pd.errors.EmptyDataError("No columns to parse from file"), id="empty csv"),
    pytest.param(pd.errors.ParserError("Error tokenizing data"), id="truncated csv"),
    pytest.param(KeyError("dep_delay"), id="schema drift: a column gone"),
    pytest.param(TypeError("unsupported operand"), id="a column of the wrong type"),
    pytest.param(ValueError("window shape cannot be larger than input array shape"), id="crash on empty data"),
    pytest.param(DatasetError("splits ['train'] are empty"), id="empty window"),
    pytest.param(SourceError("landing file is not parquet"), id="bad landing file"),
    pytest.param(DeployError("signature mismatch"), id="deploy refusal"),
]
TRANSIENT = [
    pytest.param(ConnectionRefusedError(111, "Connection refused"), id="refused connection"),
    pytest.param(ConnectionResetError(104, "Connection reset by peer"), id="reset connection"),
    pytest.param(TimeoutError("timed out"), id="timeout"),
    pytest.param(OSError(28, "No space left on device"), id="disk full"),
    pytest.param(sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")), id="db gone"),
    pytest.param(RuntimeError("something else"), id="unknown: keeps its retries"),
]


@pytest.mark.parametrize("exc", PERMANENT)
def test_bad_data_and_crashes_on_it_are_permanent(exc: BaseException) -> None:
    assert is_permanent(exc)


@pytest.mark.parametrize("exc", TRANSIENT)
def test_outages_and_timeouts_keep_their_retries(exc: BaseException) -> None:
    assert not is_permanent(exc)


def test_our_permanent_errors_are_the_ones_airflow_fails_without_retrying() -> None:
    # Airflow's task runner fails an AirflowFailException at once, whatever the task's retries.
    for cls in (PermanentError, DatasetError, SourceError, DeployError):
        assert issubclass(cls, AirflowFailException), cls


def test_fail_fast_names_the_step_and_the_cause_of_a_permanent_error() -> None:
    step = f"evaluate {dt.date(2013, 3, 31)}"
    named = r"evaluate 2013-03-31: ValueError: window shape"
    with pytest.raises(PermanentError, match=named) as raised, fail_fast(step):
        raise ValueError("window shape cannot be larger than input array shape")
    assert isinstance(raised.value.__cause__, ValueError)


@pytest.mark.parametrize("exc", TRANSIENT)
def test_fail_fast_lets_a_transient_error_through_unchanged(exc: BaseException) -> None:
    with pytest.raises(type(exc)) as raised, fail_fast("materialize"):
        raise exc
    assert raised.value is exc
    assert not isinstance(raised.value, PermanentError)


def test_fail_fast_keeps_a_permanent_error_of_ours_as_it_is() -> None:
    error = DatasetError("days 2013-03-01…03 are not published")
    with pytest.raises(DatasetError) as raised, fail_fast("build_dataset"):
        raise error
    assert raised.value is error
