"""Load `airflow_settings.yaml` (Astro CLI format) through Airflow's own import commands."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


class SettingsFileError(ValueError):
    """airflow_settings.yaml is malformed; the message names the entry."""


def _require(entry: dict[str, Any], keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if entry.get(k) in (None, "")]
    if missing:
        raise SettingsFileError(f"airflow_settings.yaml: {what} entry {entry} lacks {missing}")


def convert(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Astro's lists → the JSON shapes `airflow connections/variables/pools import` read."""
    section = (settings or {}).get("airflow") or {}
    connections: dict[str, Any] = {}
    for entry in section.get("connections") or []:
        _require(entry, ("conn_id",), "connection")
        if entry.get("conn_uri"):
            connections[entry["conn_id"]] = entry["conn_uri"]
            continue
        _require(entry, ("conn_type",), "connection")
        extra = entry.get("conn_extra")
        connections[entry["conn_id"]] = {
            "conn_type": entry["conn_type"],
            "description": entry.get("conn_description"),
            "host": entry.get("conn_host"),
            "schema": entry.get("conn_schema"),
            "login": entry.get("conn_login"),
            "password": entry.get("conn_password"),
            "port": entry.get("conn_port"),
            "extra": json.dumps(extra) if isinstance(extra, dict) else extra,
        }
    variables: dict[str, Any] = {}
    for entry in section.get("variables") or []:
        _require(entry, ("variable_name",), "variable")
        if "variable_value" not in entry:
            raise SettingsFileError(f"airflow_settings.yaml: variable {entry['variable_name']} has no value")
        variables[entry["variable_name"]] = {
            "value": entry["variable_value"],
            "description": entry.get("variable_description"),
        }
    pools: dict[str, Any] = {}
    for entry in section.get("pools") or []:
        _require(entry, ("pool_name", "pool_slot"), "pool")
        pools[entry["pool_name"]] = {
            "slots": int(entry["pool_slot"]),
            "description": entry.get("pool_description", ""),
            "include_deferred": bool(entry.get("pool_include_deferred", False)),
        }
    return {"connections": connections, "variables": variables, "pools": pools}


TRAINING_POOL = "gpu_training"


def pool_slots(pools: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The pools with the training pool sized to the tuning shards (`NIGHTSHIFT_TUNE_SHARDS`), so the shards
    of one tuning run at once, one per slot, on as many workers or pods; never fewer than the file says."""
    from include.core.config import tune_shards

    if TRAINING_POOL not in pools:
        return pools
    sized = dict(pools[TRAINING_POOL], slots=max(int(pools[TRAINING_POOL]["slots"]), tune_shards(env)))
    return {**pools, TRAINING_POOL: sized}


def import_settings(path: Path, env: dict[str, str]) -> dict[str, int]:
    """Run Airflow's importers on the converted file; returns how many of each were loaded."""
    converted = convert(yaml.safe_load(path.read_text()))
    converted["pools"] = pool_slots(converted["pools"], env)
    commands = {
        "connections": ["connections", "import", "--overwrite"],
        "variables": ["variables", "import", "-a", "overwrite"],
        "pools": ["pools", "import"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for kind, command in commands.items():
            if not converted[kind]:
                continue
            target = Path(tmp) / f"{kind}.json"
            target.write_text(json.dumps(converted[kind], indent=2))
            subprocess.run(["airflow", *command[:2], str(target), *command[2:]], env=env, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
    return {kind: len(items) for kind, items in converted.items()}
