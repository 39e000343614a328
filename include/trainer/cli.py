"""The one training entry point, identical in a GPU pod and in a local subprocess.

    python -m include.trainer tune --dataset URI --out URI [--tuner hyperband] [--max-trials 6] …
    python -m include.trainer evaluate --dataset URI --out URI [--champion URI] [--seed 7]

`tune` searches hyperparameters with keras-tuner on train/validation and retrains the best
`ensemble_size` configurations as members. `evaluate` fits the ensemble method and a calibrator on
validation (each chosen by cross-fitted log loss with `auto`), exports ONE SavedModel, checks it
against the in-memory ensemble, scores the test days (and the champion, when given, on the same
rows), trains the gradient-boosting baseline with its own search and writes the report.
Each prints a one-line JSON summary last, and writes it to `{out}/<command>.json`.
I/O goes through fsspec, so `file://` and `s3://` both work without Airflow in the image.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from include.contract.training import CALIBRATORS, METHODS, TUNERS, WARM_STARTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("tune", "evaluate"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--dataset", required=True, help="dataset folder URI (with train/validation/test.parquet)")
        cmd.add_argument("--out", required=True, help="model folder URI for this run")
        cmd.add_argument("--seed", type=int, default=7)
    tune_cmd = sub.choices["tune"]
    tune_cmd.add_argument("--tuner", choices=list(TUNERS), default="hyperband")
    tune_cmd.add_argument("--max-trials", type=int, default=6)
    tune_cmd.add_argument("--epochs", type=int, default=6)
    tune_cmd.add_argument("--ensemble-size", type=int, default=2)
    tune_cmd.add_argument("--shard", type=int, default=0, help="this pod's share of the search (0-based)")
    tune_cmd.add_argument("--shards", type=int, default=1, help="pods searching in parallel; each writes shard_<i>/")
    tune_cmd.add_argument(
        "--warm-start",
        choices=list(WARM_STARTS),
        default="off",
        help="fine-tune the champion's members: alone (champion) or against a fresh search (both)",
    )
    tune_cmd.add_argument("--warm-from", default="", help="the champion's SavedModel URI (empty: none yet)")
    tune_cmd.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True,
                          help="retrain each member on train + validation for its best epoch count")  # fmt: skip
    eval_cmd = sub.choices["evaluate"]
    eval_cmd.add_argument("--champion", default=None, help="SavedModel URI of the production model, if any")
    eval_cmd.add_argument("--tree-member", action=argparse.BooleanOptionalAction, default=False,
                          help="add the GBDT baseline, compiled to TensorFlow ops, as an ensemble member")  # fmt: skip
    eval_cmd.add_argument("--ensemble-method", choices=["auto", *METHODS], default="auto",
                          help="how members combine; auto = least cross-fitted validation log loss")  # fmt: skip
    eval_cmd.add_argument(
        "--calibration",
        choices=["auto", *CALIBRATORS],
        default="auto",
        help="the calibrator inside the SavedModel; auto = least cross-fitted validation log loss",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "tune":
        from include.trainer.tuning import tune

        summary = tune(args)
    else:
        from include.trainer.evaluation import evaluate

        summary = evaluate(args)
    xcom_file = os.environ.get("NIGHTSHIFT_XCOM_FILE")  # the pod backend's XCom sidecar reads this
    if xcom_file:
        Path(xcom_file).parent.mkdir(parents=True, exist_ok=True)
        Path(xcom_file).write_text(json.dumps(summary))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
