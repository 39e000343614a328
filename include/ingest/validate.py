"""validate: run the Great Expectations suites in `expectations/` on a day's clean partitions.

Suites are plain JSON files (GX 1.x format) with a `severity` on every expectation. A failed
`critical` expectation fails the day and stops the run before materialization; `warning`
failures are recorded and reported but do not stop it. Results and Data Docs go to the lake,
a summary row per suite and day goes to Postgres.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from include.core import lake
from include.core.config import PROJECT_ROOT

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

EXPECTATIONS_DIR = PROJECT_ROOT / "expectations"
SUITES = {"flights_clean": "flights", "weather_clean": "weather"}


class ValidationFailed(AirflowFailException):
    """A critical expectation failed; the message names each one and what was observed.

    Deterministic for the data at hand, so the task fails at once instead of retrying.
    """


@dataclass
class SuiteOutcome:
    suite: str
    day: dt.date
    success: bool
    evaluated: int
    critical_failures: list[dict[str, Any]] = field(default_factory=list)
    warning_failures: list[dict[str, Any]] = field(default_factory=list)
    result_uri: str = ""
    docs_uri: str | None = None

    def describe_failures(self) -> str:
        return "; ".join(
            f"{f['expectation']}({f['column'] or 'table'}) observed {f['observed']}" for f in self.critical_failures
        )


def load_suite_json(name: str, directory: Path = EXPECTATIONS_DIR) -> dict[str, Any]:
    path = directory / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"expectation suite {path} is missing")
    return json.loads(path.read_text())


def _observed(result: dict[str, Any]) -> Any:
    if "observed_value" in result:
        return result["observed_value"]
    if "unexpected_count" in result:
        sample = result.get("partial_unexpected_list", [])[:5]
        return f"{result['unexpected_count']} unexpected ({result.get('unexpected_percent', 0):.2f}%), e.g. {sample}"
    return result


class DayValidator:
    """One GX ephemeral context for a whole task, reused across the days it validates."""

    def __init__(self, expectations_dir: Path = EXPECTATIONS_DIR) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._gx = gx
        self.docs_dir = Path(tempfile.mkdtemp(prefix="nightshift-gx-docs-"))
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.context.add_data_docs_site(
            site_name="lake",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(self.docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        source = self.context.data_sources.add_pandas("nightshift")
        self.checkpoints = {}
        for suite_name in SUITES:
            suite = self.context.suites.add(gx.ExpectationSuite(**load_suite_json(suite_name, expectations_dir)))
            batch = source.add_dataframe_asset(suite_name).add_batch_definition_whole_dataframe("day")
            definition = self.context.validation_definitions.add(
                gx.ValidationDefinition(name=f"{suite_name}_day", data=batch, suite=suite)
            )
            self.checkpoints[suite_name] = self.context.checkpoints.add(
                gx.Checkpoint(
                    name=f"{suite_name}_checkpoint",
                    validation_definitions=[definition],
                    result_format="SUMMARY",
                )
            )

    def run(
        self, suite_name: str, frame: pd.DataFrame, day: dt.date, parameters: dict[str, Any]
    ) -> tuple[SuiteOutcome, dict[str, Any]]:
        from great_expectations.core.run_identifier import RunIdentifier

        result = self.checkpoints[suite_name].run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=parameters,
            run_id=RunIdentifier(run_name=f"date={day.isoformat()}"),
        )
        validation = next(iter(result.run_results.values()))
        outcome = SuiteOutcome(suite=suite_name, day=day, success=True, evaluated=len(validation.results))
        for item in validation.results:
            if item.success:
                continue
            config = item.expectation_config
            failure = {
                "expectation": config.type,
                "column": config.kwargs.get("column") or config.kwargs.get("column_list"),
                "severity": str(getattr(config.severity, "value", config.severity)),
                "observed": _observed(item.result or {}),
            }
            if failure["severity"] == "critical":
                outcome.critical_failures.append(failure)
            else:
                outcome.warning_failures.append(failure)
        outcome.success = not outcome.critical_failures
        return outcome, validation.to_json_dict()

    def publish_docs(self, target: ObjectStoragePath) -> dict[str, str]:
        """Build the Data Docs site once for every result so far, move it to the lake; returns page path → URI.

        Built once, not per checkpoint run: each build re-renders the index over every stored result,
        which made a 61-day range spend more time on Data Docs than on the expectations.
        """
        self.context.build_data_docs(site_names=["lake"])
        pages = lake.copy_tree(self.docs_dir, target)
        shutil.rmtree(self.docs_dir, ignore_errors=True)
        return pages
