"""Which failures a retry can fix, in one table.

A **permanent** error (bad data, an empty window, a malformed landing file, schema drift, a crash on
the data) fails its task at once, naming the cause: retrying it only burns the retries and delays
the alert. A **transient** one (a refused connection, a timeout, a database that went away) keeps
the task's retries with backoff.

Our own permanent errors subclass `PermanentError`, which is Airflow's `AirflowFailException`: the
task runner fails such a task without retrying. Errors raised by libraries go through `fail_fast`,
which re-raises the permanent kinds as a `PermanentError` naming the original.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow.sdk.exceptions import AirflowFailException


class PermanentError(AirflowFailException):
    """A failure no retry can fix; the message says what is wrong and where."""


# Library errors that mean "the data or the request is wrong", never "try again later".
PERMANENT_LIBRARY_ERRORS: tuple[type[BaseException], ...] = (
    UnicodeDecodeError,
    KeyError,
    TypeError,
    ValueError,  # includes pandas' EmptyDataError and ParserError
)

# Errors that keep their retries. They are listed so the table is explicit: an OSError such as a
# refused connection, a timeout, or a database that went away is worth another try.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError)


def is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, AirflowFailException):
        return True
    if isinstance(exc, TRANSIENT_ERRORS) and not isinstance(exc, UnicodeDecodeError):
        return False
    return isinstance(exc, PERMANENT_LIBRARY_ERRORS)


@contextlib.contextmanager
def fail_fast(what: str) -> Iterator[None]:
    """Run a step; a permanent library error leaves as a `PermanentError` ("<what>: <type>: <message>")."""
    try:
        yield
    except AirflowFailException:
        raise
    except Exception as exc:
        if is_permanent(exc):
            raise PermanentError(f"{what}: {type(exc).__name__}: {exc}") from exc
        raise
