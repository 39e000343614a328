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
from include.contract.training import FAMILIES

CROSS_LAYERS = 2

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


def _logit(p):
    p = ops.clip(p, 1e-6, 1.0 - 1e-6)
    return ops.log(p) - ops.log1p(-p)


@keras.saving.register_keras_serializable(package="nightshift")
class Combine(layers.Layer):
    """The members' probabilities → one, by a method fit on validation (`include/trainer/combine.py`):
    `averaging` / `soft_voting` (weights), `majority_voting` (per-member thresholds) or `stacking`
    (a logistic meta-learner on the members' logits: coef, intercept)."""

    def __init__(self, method: str, params: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.method, self.params = method, dict(params)

    def call(self, inputs):
        stacked = ops.concatenate(inputs, axis=-1)
        if self.method in ("averaging", "soft_voting"):
            weights = ops.convert_to_tensor(self.params["weights"], dtype=stacked.dtype)
            return ops.sum(stacked * weights, axis=-1, keepdims=True)
        if self.method == "majority_voting":
            thresholds = ops.convert_to_tensor(self.params["thresholds"], dtype=stacked.dtype)
            return ops.mean(ops.cast(stacked >= thresholds, stacked.dtype), axis=-1, keepdims=True)
        if self.method == "stacking":
            coef = ops.convert_to_tensor(self.params["coef"], dtype=stacked.dtype)
            z = ops.sum(_logit(stacked) * coef, axis=-1, keepdims=True) + self.params["intercept"]
            return ops.sigmoid(z)
        raise ValueError(f"unknown ensemble method {self.method!r}")

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "method": self.method, "params": self.params}


@keras.saving.register_keras_serializable(package="nightshift")
class Calibrate(layers.Layer):
    """A monotone map of the ensemble's probability, fit on validation: `platt` (sigmoid(a·logit(p) + b))
    or `piecewise` (linear between knots x → y, flat outside them)."""

    def __init__(self, kind: str, params: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind, self.params = kind, dict(params)

    def call(self, p):
        if self.kind == "platt":
            return ops.sigmoid(self.params["a"] * _logit(p) + self.params["b"])
        if self.kind == "piecewise":
            x, y = self.params["x"], self.params["y"]
            out = ops.full_like(p, y[0])
            for k in range(len(x) - 1):  # add each segment's rise over the part of [x_k, x_k+1] below p
                width = x[k + 1] - x[k]
                if width > 0:
                    out = out + (y[k + 1] - y[k]) * ops.clip((p - x[k]) / width, 0.0, 1.0)
            return out
        raise ValueError(f"unknown calibrator {self.kind!r}")

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kind": self.kind, "params": self.params}


@keras.saving.register_keras_serializable(package="nightshift")
class Cross(layers.Layer):
    """One DCN cross layer (Wang et al. 2017/2020): `x0 · (W x + b) + x`, a full-rank W."""

    def build(self, input_shape):
        width = int(input_shape[0][-1])
        self.dense = layers.Dense(width, name="cross_dense")
        self.dense.build((None, width))

    def call(self, inputs):
        x0, x = inputs
        return x0 * self.dense(x) + x


def model_inputs() -> dict[str, keras.KerasTensor]:
    """One scalar input per raw feature, named as in `include/contract/features.py`."""
    return {
        **{c: keras.Input(shape=(), dtype="string", name=c) for c in CATEGORICAL},
        **{n: keras.Input(shape=(), dtype="float32", name=n) for n in NUMERIC},
    }


def build_model(
    stats: FeatureStats, hp: dict[str, Any], inputs: dict[str, keras.KerasTensor] | None = None
) -> keras.Model:
    """The network for one hyperparameter set (`family`, `units`, `layers`, `dropout`, `embedding_dim`,
    `learning_rate`). Every family shares the preprocessing and ends in one delay probability:

    * `mlp`: embeddings and normalized inputs through `layers` dense layers;
    * `wide_deep`: that, plus a linear (wide) model over one-hot categories and the inputs, logits added;
    * `dcn`: a deep & cross network: CROSS_LAYERS cross layers (explicit feature crosses) before the MLP.
    """
    family = str(hp.get("family", "mlp"))  # members tuned before the families were all MLPs
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    inputs = inputs or model_inputs()
    encoded, one_hot = [], []
    for column in CATEGORICAL:
        vocabulary = stats.vocabularies[column] or ["<none>"]
        ids = layers.StringLookup(vocabulary=vocabulary, num_oov_indices=1, name=f"{column}_lookup")(inputs[column])
        dim = min(int(hp["embedding_dim"]), len(vocabulary) + 1)
        encoded.append(layers.Embedding(len(vocabulary) + 1, dim, name=f"{column}_embedding")(ids))
        if family == "wide_deep":
            one_hot.append(layers.CategoryEncoding(len(vocabulary) + 1, output_mode="one_hot",
                                                   name=f"{column}_one_hot")(ids))  # fmt: skip
    numeric = layers.Concatenate(name="numeric")([layers.Reshape((1,))(inputs[n]) for n in NUMERIC])
    filled = FillMissing([stats.means[n] for n in NUMERIC], name="fill_missing")(numeric)
    width = len(NUMERIC)
    normalized = layers.Normalization(
        mean=[stats.means[n] for n in NUMERIC] + [0.0] * width,
        variance=[stats.variances[n] for n in NUMERIC] + [1.0] * width,
        name="normalize",
    )(filled)
    features = layers.Concatenate(name="features")([*encoded, normalized])
    hidden = features
    if family == "dcn":  # deep & cross: explicit feature crosses x0 · (W x + b) + x before the MLP
        for index in range(CROSS_LAYERS):
            hidden = Cross(name=f"cross_{index}")([features, hidden])
    for index in range(int(hp["layers"])):
        hidden = layers.Dense(int(hp["units"]), activation="relu", name=f"dense_{index}")(hidden)
        hidden = layers.Dropout(float(hp["dropout"]), name=f"dropout_{index}")(hidden)
    logit = layers.Dense(1, name="deep_logit")(hidden)
    if family == "wide_deep":  # a linear model over one-hot categories and the inputs, added to the deep logit
        wide = layers.Concatenate(name="wide_features")([*one_hot, normalized])
        logit = layers.Add(name="wide_and_deep")([logit, layers.Dense(1, name="wide_logit")(wide)])
    output = layers.Activation("sigmoid", name="delay_probability")(logit)
    model = keras.Model(inputs=inputs, outputs=output, name=f"flight_delay_{family}")
    model.compile(
        optimizer=keras.optimizers.Adam(float(hp["learning_rate"])),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )
    return model


def build_ensemble(members: list[keras.Model], combiner: Any, calibrator: Any = None) -> keras.Model:
    """ONE model: shared raw inputs → every member → the fitted ensemble method → the calibrator.
    `combiner` and `calibrator` are `include.trainer.combine`'s `Combiner` and `Calibrator`."""
    inputs = model_inputs()
    outputs = [member(inputs) for member in members]
    combined = Combine(combiner.method, combiner.params, name="ensemble")(outputs) if len(outputs) > 1 else outputs[0]
    if calibrator is not None and calibrator.kind != "none":
        combined = Calibrate(calibrator.kind, calibrator.params, name="calibration")(combined)
    return keras.Model(inputs=inputs, outputs=combined, name="flight_delay_ensemble")


def labels(frame: pd.DataFrame) -> np.ndarray:
    return frame[LABEL_KEY].astype("float32").to_numpy()
