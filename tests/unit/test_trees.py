"""The tree member: scikit-learn's gradient boosting compiled to TensorFlow ops gives scikit-learn's scores."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from include.contract.features import LABEL_KEY
from include.contract.inputs import CATEGORICAL, NUMERIC, to_model_inputs


def _flights(n: int, seed: int) -> pd.DataFrame:
    """Rows with every model input: many categories (tail numbers past bitset word 0, and ""), numbers
    with missing values, and a label that depends on both."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f: rng.normal(size=n) for f in NUMERIC})
    for column in NUMERIC[:6]:
        frame.loc[rng.random(n) < 0.15, column] = np.nan
    for column in CATEGORICAL:
        frame[column] = rng.choice([f"{column}{i}" for i in range(6)], size=n)
    frame["tailnum"] = rng.choice([f"N{i:03d}" for i in range(120)] + [""], size=n)
    tail = frame["tailnum"].str[1:].replace("", "0").astype(int)
    signal = np.nan_to_num(frame[NUMERIC[0]].to_numpy(), nan=1.5) + (tail % 7 == 0) + 0.8 * frame["carrier"].eq(
        "carrier1") - np.nan_to_num(frame[NUMERIC[7]].to_numpy()) ** 2  # fmt: skip
    frame[LABEL_KEY] = (signal + rng.normal(size=n) > 0.3).astype(int)
    frame["flight_date"] = dt.date(2013, 1, 1)
    return frame


@pytest.fixture(scope="module")
def fitted():
    from sklearn.ensemble import HistGradientBoostingClassifier

    from include.trainer.evaluation import _gbdt_categories, _gbdt_encode

    train = _flights(3000, seed=1)
    categories = _gbdt_categories(train)
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0, max_iter=40,
                                           max_depth=6, early_stopping=False)  # fmt: skip
    model.fit(_gbdt_encode(train, categories), train[LABEL_KEY])
    return model, categories


def test_the_compiled_forest_scores_every_row_as_scikit_learn_does(fitted) -> None:
    from include.trainer.evaluation import _gbdt_encode
    from include.trainer.trees import compile_forest, tree_member

    model, categories = fitted
    rows = _flights(2000, seed=2)
    # What the classifier never saw: a tail number and a carrier of no training row, and values missing
    # from inputs that had none in training.
    rows.loc[:99, "tailnum"] = "N999"
    rows.loc[100:199, "carrier"] = "XX"
    rows.loc[200:299, NUMERIC[10]] = np.nan
    forest = compile_forest(model)
    assert (forest.trees, forest.depth) == (40, 6)
    assert forest.value.shape == (40, 64)  # 2**6 leaves per tree
    assert (forest.category_row > 0).any()  # categorical splits are exercised
    assert forest.left_categories[:, 32:].any()  # … past the first 32 codes (bitset word 0)
    expected = model.predict_proba(_gbdt_encode(rows, categories))[:, 1]
    member = tree_member(forest)
    got = member.predict(to_model_inputs(rows), batch_size=512, verbose=0).reshape(-1)
    assert got.dtype == np.float32
    assert np.max(np.abs(got - expected)) <= 1e-6


@pytest.mark.slow  # trains a network and exports a SavedModel (about 9 s)
def test_the_tree_member_exports_in_one_saved_model_with_a_network(fitted, tmp_path) -> None:
    import tensorflow as tf

    from include.trainer.combine import fit_combiner
    from include.trainer.model import FeatureStats, build_ensemble, build_model, labels
    from include.trainer.trees import compile_forest, tree_member

    model, _ = fitted
    train = _flights(800, seed=3)
    x, y = to_model_inputs(train), labels(train)
    network = build_model(FeatureStats.from_frame(train), {"family": "mlp", "units": 8, "layers": 1, "dropout": 0.0,
                                                           "embedding_dim": 4, "learning_rate": 1e-2})  # fmt: skip
    network.fit(x, y, epochs=1, batch_size=256, verbose=0)
    network.name, trees = "member_0", tree_member(compile_forest(model), name="member_1")
    member_p = np.column_stack([m.predict(x, verbose=0).reshape(-1) for m in (network, trees)])
    combiner = fit_combiner("stacking", y, member_p)
    ensemble = build_ensemble([network, trees], combiner)
    in_memory = ensemble.predict(x, verbose=0).reshape(-1)
    assert np.max(np.abs(in_memory - combiner.predict(member_p))) <= 1e-5
    ensemble.export(str(tmp_path / "saved_model"), format="tf_saved_model", verbose=False)
    signature = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    exported = next(iter(signature(**{k: tf.constant(v) for k, v in x.items()}).values())).numpy().reshape(-1)
    assert np.max(np.abs(exported - in_memory)) <= 1e-5
    # Stock ops only: none of TensorFlow Decision Forests' or the estimator's boosted-trees kernels.
    graph = signature.graph.as_graph_def()
    ops = {node.op for function in graph.library.function for node in function.node_def}
    assert "GatherV2" in ops
    assert not any(op.startswith(("SimpleML", "BoostedTrees", "TensorForest")) for op in ops)
