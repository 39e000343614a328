"""Warm start: fine-tune the production model's members on the new window.

The champion's members (the ones it serves) are loaded with their preprocessing as it was, their
optimizer rebuilt at a tenth of their learning rate, and trained on the new training split with
early stopping on validation. Like fresh members (`tuning.tune --refit`), each is then fine-tuned
again from the champion's weights on train + validation for the epoch count validation chose, and
its held-out twin is kept for `evaluate`. `evaluate` lets them compete with a fresh search.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("nightshift.trainer")

LEARNING_RATE_FACTOR = 0.1


def champion_folder(saved_model_uri: str) -> str:
    """The champion's model folder (its members and tune.json) from its SavedModel URI."""
    return saved_model_uri.rstrip("/").removesuffix("/saved_model")


def _recompiled(model, learning_rate: float):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc")])  # fmt: skip
    return model


def fine_tune(champion_uri: str, train, validation, epochs: int, seed: int, refit: bool, work: Path,
              batch_size: int) -> list[dict[str, Any]]:  # fmt: skip
    """Fine-tune every member of the champion at `champion_uri` (its SavedModel URI); writes
    `member_w<i>[.holdout].keras` under `work` and returns their tune.json entries (none when the
    champion's folder holds no members)."""
    import keras
    import numpy as np
    import pandas as pd

    from include.contract.inputs import to_model_inputs
    from include.trainer import model as _model
    from include.trainer.evaluation import select_members
    from include.trainer.io import download_dir
    from include.trainer.model import labels

    folder = download_dir(champion_folder(champion_uri), Path(tempfile.mkdtemp(prefix="nightshift-warm-")))
    evaluated = folder / "evaluate.json"
    served = json.loads(evaluated.read_text()).get("exported_members") if evaluated.exists() else None
    # The members the champion serves: what its evaluate exported (a fresh search's or a warm start's).
    exported_paths = [folder / name for name in served] if served else [e for e, _ in select_members(folder)]
    if not exported_paths:  # registered by hand, or from elsewhere: nothing to start from
        log.warning("warm start: no member_*.keras beside %s; a fresh search only", champion_uri)
        return []
    rates = {}  # each served member's own learning rate (a warm member keeps its first member's)
    for summary_file in folder.rglob("tune.json"):
        summary = json.loads(summary_file.read_text())
        for member in [*summary.get("members", []), *summary.get("warm_members", [])]:
            rate = member["learning_rate"] if "learning_rate" in member else member["hyperparameters"]["learning_rate"]
            rates[str(summary_file.parent / f"member_{member['index']}.keras")] = rate

    def load(path: Path):
        return keras.saving.load_model(path, custom_objects={"FillMissing": _model.FillMissing})

    x_train, y_train = to_model_inputs(train), labels(train)
    x_val, y_val = to_model_inputs(validation), labels(validation)
    both = pd.concat([train, validation], ignore_index=True) if refit else None
    entries = []
    for index, exported in enumerate(exported_paths):
        base = float(rates.get(str(exported), 1e-3))
        rate = base * LEARNING_RATE_FACTOR
        keras.utils.set_random_seed(seed + 500 + index)
        model = _recompiled(load(exported), rate)
        stop = keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=2, restore_best_weights=True)
        history = model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=epochs, batch_size=batch_size,
                            callbacks=[stop], verbose=0)  # fmt: skip
        best_epochs = int(np.argmax(history.history["val_auc"])) + 1
        name = f"w{index}"
        entry = {"index": name, "from": champion_uri, "learning_rate": base, "fine_tune_learning_rate": rate,
                 "val_auc": round(float(max(history.history["val_auc"])), 6),
                 "epochs": len(history.history["val_auc"]), "best_epochs": best_epochs}  # fmt: skip
        if both is None:
            model.save(work / f"member_{name}.keras")
        else:
            model.save(work / f"member_{name}.holdout.keras")
            keras.utils.set_random_seed(seed + 500 + index)
            again = _recompiled(load(exported), rate)
            again.fit(to_model_inputs(both), labels(both), epochs=best_epochs, batch_size=batch_size, verbose=0)
            again.save(work / f"member_{name}.keras")
            entry["refit_rows"] = len(both)
        entries.append(entry)
        log.info("warm member %s (from %s): val_auc %.4f after %d epoch(s) at learning rate %g", name, exported.name,
                 entry["val_auc"], best_epochs, rate)  # fmt: skip
    return entries
