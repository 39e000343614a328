"""At most one training per night's data (issue 13, defect 2): a run whose dataset bytes, code and
form values equal an existing version's is skipped and records `skipped: identical to vN`, so the
features event, the 02:00 fallback and a retraining request of the same night train once."""

from __future__ import annotations

import sqlalchemy as sa

from include import db
from tests.server_fixtures import CONF


def test_a_second_training_on_the_same_data_is_skipped_and_says_why(dagbag, trained, db_url) -> None:
    _, first, _ = trained
    with db.engine(db_url).connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(db.model_versions)).scalar_one()
    run = dagbag.get_dag("nightshift_train").test(run_conf=CONF)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert states["is_new"] == "success"
    assert {states[t] for t in ("gate_and_register", "is_blessed", "publish_candidate")} == {"skipped"}
    assert all(state == "skipped" for task, state in states.items() if task.startswith(("tune", "evaluate")))
    with db.engine(db_url).connect() as conn:
        after = conn.execute(sa.select(sa.func.count()).select_from(db.model_versions)).scalar_one()
        outcome = conn.execute(
            sa.select(db.runs.c.outcome).where(db.runs.c.dag_id == "nightshift_train", db.runs.c.run_id == run.run_id)
        ).scalar_one()
    assert after == before
    assert outcome.startswith("skipped: identical to v")
    same = int(outcome.removeprefix("skipped: identical to v"))
    with db.engine(db_url).connect() as conn:  # the newest identical one (tests register copies of the first)
        twin = conn.execute(sa.select(db.model_versions).where(db.model_versions.c.version == same)).mappings().one()
    assert (twin["dataset_sha256"], twin["code_version"], twin["params"]) == (
        first["dataset_sha256"], first["code_version"], first["params"])  # fmt: skip


def test_other_form_values_or_other_data_are_not_identical(trained, db_url) -> None:
    from include.train.steps import identical_version

    _, first, _ = trained
    dataset = {"content_sha256": first["dataset_sha256"]}
    assert identical_version(db_url, first["params"], dataset) >= first["version"]
    assert identical_version(db_url, {**first["params"], "seed": first["params"]["seed"] + 1}, dataset) is None
    assert identical_version(db_url, first["params"], {"content_sha256": "0" * 64}) is None


def test_naming_the_latest_day_or_leaving_it_empty_is_the_same_training(trained, db_url) -> None:
    """The demo trains with `end_date` set; the first scheduled run after it leaves it empty (the latest
    validated day). On the same dataset bytes they are one training, not two."""
    from include.train.steps import identical_version

    _, first, _ = trained
    dataset = {"content_sha256": first["dataset_sha256"]}
    for end_date in (None, "2013-07-31", first["params"].get("end_date")):
        assert identical_version(db_url, {**first["params"], "end_date": end_date}, dataset) >= first["version"]
    without = {k: v for k, v in first["params"].items() if k != "end_date"}
    assert identical_version(db_url, without, dataset) >= first["version"]
