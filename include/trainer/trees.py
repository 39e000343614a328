"""A gradient-boosted tree member, compiled to plain TensorFlow ops so that it joins the ONE SavedModel.

A fitted scikit-learn `HistGradientBoostingClassifier` (`evaluation.gbdt_search`, trees held to
TREE_MAX_DEPTH levels) is read into arrays of complete trees: per split, its input, threshold,
missing-value direction and, for a categorical split, the codes that go left. `TreeForest`, a Keras
layer, walks every tree at once, as scikit-learn's `_predict_from_raw_data` walks one: a missing value
follows the split's missing direction; a number goes left when `<=` the threshold; a category goes
left when its code is in the split's set; a category the classifier never saw counts as missing. The
ops (`Equal`, `GatherV2`, `SelectV2`, `Sigmoid`) are stock TensorFlow, so stock TF Serving loads the
result with no custom op, unlike TensorFlow Decision Forests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from keras import layers

from include.contract.training import TREE_MAX_DEPTH

if TYPE_CHECKING:
    from sklearn.ensemble import HistGradientBoostingClassifier

UNKNOWN = "\x00unknown"  # a placeholder no input equals: a code the trees never saw
CATEGORIES = 256  # scikit-learn codes categories 0…255 (bitsets of 8 × 32 bits)


@dataclass
class Forest:
    """One fitted classifier as arrays of complete binary trees, all of the depth of the deepest (in heap
    order: split i's children are 2i + 1 and 2i + 2). A leaf above that depth becomes a split that always
    goes left, over copies of itself, so every walk takes `depth` steps (Hummingbird's "perfect tree
    traversal", Nakandala et al., OSDI 2020): cheap for shallow trees, whatever the batch."""

    categorical: list[str]  # inputs in the classifier's own column order: categorical codes first
    vocabularies: list[list[str]]  # per categorical input, its known categories in code order
    numeric: list[str]
    depth: int
    feature: np.ndarray  # int32 [trees, splits]
    threshold: np.ndarray  # float32 [trees, splits]: left when `<=`; rounded down, so float32 inputs agree
    missing_left: np.ndarray  # bool [trees, splits]
    category_row: np.ndarray  # int32 [trees, splits]: a categorical split's row of `left_categories` (0: none)
    left_categories: np.ndarray  # bool [rows, CATEGORIES]: the codes that go left
    value: np.ndarray  # float64 [trees, leaves]: the leaf's raw score, learning rate applied
    baseline: float

    @property
    def trees(self) -> int:
        return int(self.feature.shape[0])


def compile_forest(model: HistGradientBoostingClassifier) -> Forest:
    """The fitted binary classifier (fit on a frame with pandas categoricals, `categorical_features=
    "from_dtype"`, `max_depth` ≤ TREE_MAX_DEPTH) as a `Forest`: the same scores, as `test_trees.py` checks
    against `predict_proba`."""
    preprocessor = model._preprocessor  # the frame → codes step scikit-learn runs before its trees
    if preprocessor is None or model.n_trees_per_iteration_ != 1:
        raise ValueError("compile_forest takes a binary classifier fit on a frame with categorical dtypes")
    predictors = [iteration[0] for iteration in model._predictors]
    depth = max(1, max(p.get_max_depth() for p in predictors))
    if depth > TREE_MAX_DEPTH:
        raise ValueError(f"trees {depth} deep: compile a forest fit with max_depth <= {TREE_MAX_DEPTH}")
    encoder = preprocessor.named_transformers_["encoder"]
    names = np.asarray(preprocessor.feature_names_in_, dtype=object)
    # The trees index the preprocessor's output: the encoder's (categorical) columns first, then the rest.
    categorical = [str(n) for n in names[model.is_categorical_]]
    numeric = [str(n) for n in names[~model.is_categorical_]]
    known, f_idx_map = model._bin_mapper.make_known_categories_bitsets()
    vocabularies = []
    for j, categories in enumerate(encoder.categories_):
        row = _codes(known[f_idx_map[j]])
        vocabularies.append([c if isinstance(c, str) and row[code] else UNKNOWN
                             for code, c in enumerate(categories)])  # fmt: skip
    shape = (len(predictors), 2**depth - 1)
    forest = Forest(
        categorical=categorical, vocabularies=vocabularies, numeric=numeric, depth=depth,
        feature=np.zeros(shape, np.int32), threshold=np.full(shape, np.inf, np.float32),
        missing_left=np.ones(shape, bool), category_row=np.zeros(shape, np.int32),
        left_categories=np.zeros((1, CATEGORIES), bool), value=np.zeros((len(predictors), 2**depth)),
        baseline=float(np.asarray(model._baseline_prediction).reshape(-1)[0]),
    )  # fmt: skip
    rows = [np.zeros(CATEGORIES, bool)]
    for t, predictor in enumerate(predictors):
        nodes = predictor.nodes
        stack = [(0, 0)]  # (scikit-learn's node, its place in the complete tree)
        while stack:
            index, place = stack.pop()
            node = nodes[index]
            if node["is_leaf"]:  # every leaf of the complete tree below `place` gets this leaf's value
                level = int(np.floor(np.log2(place + 1)))
                first = (place + 1) * 2 ** (depth - level) - 2**depth
                forest.value[t, first : first + 2 ** (depth - level)] = node["value"]
                continue  # the splits below keep their defaults: always left
            forest.feature[t, place] = node["feature_idx"]
            forest.missing_left[t, place] = bool(node["missing_go_to_left"])
            if node["is_categorical"]:
                forest.category_row[t, place] = len(rows)
                rows.append(_codes(predictor.raw_left_cat_bitsets[node["bitset_idx"]]))
            else:
                forest.threshold[t, place] = _round_down(float(node["num_threshold"]))
            stack += [(int(node["left"]), 2 * place + 1), (int(node["right"]), 2 * place + 2)]
    forest.left_categories = np.stack(rows)
    return forest


def _round_down(threshold: float) -> np.float32:
    """The largest float32 <= threshold: for a float32 input x, `x <= it` exactly when `x <= threshold`."""
    rounded = np.float32(threshold)
    return np.nextafter(rounded, np.float32(-np.inf)) if float(rounded) > threshold else rounded


def _codes(bitset: np.ndarray) -> np.ndarray:
    """scikit-learn's bitset (8 × uint32) → a bool per code 0…255."""
    return ((bitset.astype(np.uint32)[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(bool).reshape(-1)


class TreeForest(layers.Layer):
    """The forest's delay probability from the model's raw inputs (a dict by name), shape [batch, 1]."""

    def __init__(self, forest: Forest, **kwargs: Any) -> None:
        super().__init__(trainable=False, **kwargs)
        self.forest = forest

    def call(self, inputs):
        import tensorflow as tf

        f = self.forest
        columns = []
        for name, vocabulary in zip(f.categorical, f.vocabularies, strict=True):
            values = tf.reshape(inputs[name], [-1, 1])
            equal = tf.equal(values, tf.constant(vocabulary or [UNKNOWN], tf.string)[tf.newaxis, :])
            code = tf.cast(tf.argmax(tf.cast(equal, tf.int32), axis=1), tf.float32)
            columns.append(tf.where(tf.reduce_any(equal, axis=1), code, tf.constant(np.nan, tf.float32)))
        columns += [tf.cast(tf.reshape(inputs[name], [-1]), tf.float32) for name in f.numeric]
        x = tf.stack(columns, axis=1)  # [batch, inputs], in the classifier's column order
        splits = f.feature.shape[1]
        offsets = tf.range(f.trees, dtype=tf.int32) * splits
        feature, threshold = tf.constant(f.feature.reshape(-1)), tf.constant(f.threshold.reshape(-1))
        missing_left, category_row = tf.constant(f.missing_left.reshape(-1)), tf.constant(f.category_row.reshape(-1))
        left_categories = tf.constant(f.left_categories.reshape(-1))
        place = tf.zeros([tf.shape(x)[0], f.trees], tf.int32)  # [batch, trees]: each walk's split, heap order
        for _ in range(f.depth):
            at = place + offsets
            value = tf.gather(x, tf.gather(feature, at), batch_dims=1)
            missing = tf.math.is_nan(value)
            row = tf.gather(category_row, at)
            # A category's code (0…255) where the split is on a category; 0 elsewhere, where it is not read.
            code = tf.cast(tf.where((row > 0) & ~missing, value, tf.zeros_like(value)), tf.int32)
            category_left = tf.gather(left_categories, row * CATEGORIES + code)
            go_left = tf.where(missing, tf.gather(missing_left, at),
                               tf.where(row > 0, category_left, value <= tf.gather(threshold, at)))  # fmt: skip
            place = 2 * place + 2 - tf.cast(go_left, tf.int32)
        leaf = place - splits + tf.range(f.trees, dtype=tf.int32) * (splits + 1)  # into value's flat [trees · leaves]
        raw = tf.reduce_sum(tf.gather(tf.constant(f.value.reshape(-1)), leaf), axis=1) + f.baseline
        return tf.reshape(tf.cast(tf.sigmoid(raw), tf.float32), [-1, 1])

    def compute_output_shape(self, input_shape):
        return (None, 1)


def tree_member(forest: Forest, name: str = "flight_delay_gbdt") -> keras.Model:
    """The forest as an ensemble member: the model's raw inputs → its delay probability."""
    from include.trainer.model import model_inputs

    inputs = model_inputs()
    return keras.Model(inputs=inputs, outputs=TreeForest(forest, name="gbdt_trees")(inputs), name=name)
