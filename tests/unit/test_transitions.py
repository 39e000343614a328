"""The registry's one table of status moves (`registry.TRANSITIONS`): every pair of statuses, allowed and
refused, and the deploy actions plan allows for each status, are what the table says."""

from __future__ import annotations

import itertools

import pytest

from include.core.errors import PermanentError
from include.db.tables import MODEL_STATUSES
from include.deploy.steps import ACTIONS, ENTRY_STATUS
from include.train.registry import TRANSITIONS, TransitionError, check_transition, may_become

PAIRS = list(itertools.product(MODEL_STATUSES, MODEL_STATUSES))


def test_the_table_covers_every_status_and_names_only_known_ones() -> None:
    assert set(TRANSITIONS) == set(MODEL_STATUSES)
    for current, moves in TRANSITIONS.items():
        assert set(moves) <= set(MODEL_STATUSES), current
        assert all(isinstance(why, str) and why for why in moves.values()), f"{current}: every move names its step"


@pytest.mark.parametrize(("current", "status"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_each_move_is_allowed_exactly_when_the_table_lists_it(current: str, status: str) -> None:
    allowed = current == status or status in TRANSITIONS[current]
    assert may_become(current, status) is allowed
    if allowed:
        check_transition(7, current, status)
    else:
        with pytest.raises(TransitionError, match=f"model version 7 is {current}; it cannot become {status}") as err:
            check_transition(7, current, status)
        assert isinstance(err.value, PermanentError)  # a refusal is never retried


@pytest.mark.parametrize(
    ("status", "actions"),
    [
        ("candidate", set()),  # not through the gate yet
        ("blessed", {"canary", "promote"}),  # never served: no rollback to it
        ("rejected", set()),  # final
        ("canary", {"canary", "promote", "rollback"}),
        ("production", {"rollback"}),  # (the rollback step refuses the current stable as its own target)
        ("archived", {"canary", "promote", "rollback"}),  # served before and was replaced
        ("rolled_back", {"canary", "promote"}),  # back only through validation and a canary
    ],
)
def test_the_deploy_authority_of_each_status(status: str, actions: set[str]) -> None:
    assert {a for a in ACTIONS if may_become(status, ENTRY_STATUS[a])} == actions


def test_rejected_is_final_and_nothing_returns_to_candidate() -> None:
    assert TRANSITIONS["rejected"] == {}
    assert all("candidate" not in moves for moves in TRANSITIONS.values())
