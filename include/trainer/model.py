"""The Keras model: a functional network whose preprocessing travels inside it.

Categoricals go through `StringLookup` (unseen values land in one out-of-vocabulary bucket) and
an embedding; numerics get their missing values filled with the training mean plus a "was
missing" indicator, then `Normalization`. The exported SavedModel therefore takes raw feature
values, one scalar per feature, and training and serving cannot diverge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import keras
from keras import layers, ops

from include.contract.features import LABEL_KEY
from include.contract.inputs import CATEGORICAL, NUMERIC

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

MIN_CATEGORY_COUNT = 5


@dataclass
class FeatureStats:
    """What preprocessing learns from the training split only."""

    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    variances: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_frame(cls, train: pd.DataFrame) -> FeatureStats:
        stats = cls()
        for column in CATEGORICAL:
            counts = train[column].fillna("").astype(str).value_counts()
            stats.vocabularies[column] = sorted(v for v, n in counts.items() if n >= MIN_CATEGORY_COUNT and v)
        for column in NUMERIC:
            values = train[column].astype("float64")
            mean = float(values.mean()) if values.notna().any() else 0.0
            stats.means[column] = mean
            stats.variances[column] = max(float(values.fillna(mean).var() or 0.0), 1e-6)
        return stats

    def to_dict(self) -> dict[str, Any]:
        return {"vocabularies": self.vocabularies, "means": self.means, "variances": self.variances}


@keras.saving.register_keras_serializable(package="nightshift")
class FillMissing(layers.Layer):
    """NaN → the training mean, plus a 0/1 column saying the value was missing."""

    def __init__(self, fill_values: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fill_values = [float(v) for v in fill_values]

    def call(self, inputs):
        missing = ops.isnan(inputs)
        filled = ops.where(missing, ops.convert_to_tensor(self.fill_values, dtype=inputs.dtype), inputs)
        return ops.concatenate([filled, ops.cast(missing, inputs.dtype)], axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "fill_values": self.fill_values}


@keras.saving.register_keras_serializable(package="nightshift")
class WeightedAverage(layers.Layer):
    """Fixed convex combination of member probabilities (weights fit on validation)."""

    def __init__(self, weights: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.member_weights = [float(w) for w in weights]

    def call(self, inputs):
        stacked = ops.concatenate(inputs, axis=-1)
        return ops.sum(
            stacked * ops.convert_to_tensor(self.member_weights, dtype=stacked.dtype), axis=-1, keepdims=True
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weights": self.member_weights}


def model_inputs() -> dict[str, keras.KerasTensor]:
    """One scalar input per raw feature, named as in `include/contract/features.py`."""
    return {
        **{c: keras.Input(shape=(), dtype="string", name=c) for c in CATEGORICAL},
        **{n: keras.Input(shape=(), dtype="float32", name=n) for n in NUMERIC},
    }


def build_model(
    stats: FeatureStats, hp: dict[str, Any], inputs: dict[str, keras.KerasTensor] | None = None
) -> keras.Model:
    """The network for one hyperparameter set (`units`, `layers`, `dropout`, `embedding_dim`, `learning_rate`)."""
    inputs = inputs or model_inputs()
    encoded = []
    for column in CATEGORICAL:
        vocabulary = stats.vocabularies[column] or ["<none>"]
        ids = layers.StringLookup(vocabulary=vocabulary, num_oov_indices=1, name=f"{column}_lookup")(inputs[column])
        dim = min(int(hp["embedding_dim"]), len(vocabulary) + 1)
        encoded.append(layers.Embedding(len(vocabulary) + 1, dim, name=f"{column}_embedding")(ids))
    numeric = layers.Concatenate(name="numeric")([layers.Reshape((1,))(inputs[n]) for n in NUMERIC])
    filled = FillMissing([stats.means[n] for n in NUMERIC], name="fill_missing")(numeric)
    width = len(NUMERIC)
    normalized = layers.Normalization(
        mean=[stats.means[n] for n in NUMERIC] + [0.0] * width,
        variance=[stats.variances[n] for n in NUMERIC] + [1.0] * width,
        name="normalize",
    )(filled)
    hidden = layers.Concatenate(name="features")([*encoded, normalized])
    for index in range(int(hp["layers"])):
        hidden = layers.Dense(int(hp["units"]), activation="relu", name=f"dense_{index}")(hidden)
        hidden = layers.Dropout(float(hp["dropout"]), name=f"dropout_{index}")(hidden)
    output = layers.Dense(1, activation="sigmoid", name="delay_probability")(hidden)
    model = keras.Model(inputs=inputs, outputs=output, name="flight_delay")
    model.compile(
        optimizer=keras.optimizers.Adam(float(hp["learning_rate"])),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )
    return model


def build_ensemble(members: list[keras.Model], weights: list[float]) -> keras.Model:
    """ONE model: shared raw inputs → every member → their weighted average."""
    inputs = model_inputs()
    outputs = [member(inputs) for member in members]
    averaged = WeightedAverage(weights, name="ensemble")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(inputs=inputs, outputs=averaged, name="flight_delay_ensemble")


def labels(frame: pd.DataFrame) -> np.ndarray:
    return frame[LABEL_KEY].astype("float32").to_numpy()
