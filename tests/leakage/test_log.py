"""InteractionLog: validation names the problem; from_dataset keeps rows, ids and task columns."""

import numpy as np
import pytest

from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.leakage import InteractionLog


def _arrays(rows=6, seed=0):
    rng = np.random.default_rng(seed)
    return dict(user=rng.integers(0, 3, rows), item=rng.integers(0, 5, rows),
                timestamp=rng.random(rows) * 100, labels=rng.integers(0, 2, rows))


def test_single_task_labels_become_a_column_and_vocabularies_default_to_max_id():
    arrays = _arrays()
    log = InteractionLog(**arrays)
    assert log.labels.shape == (6, 1) and log.task_names == ("task0",)
    assert log.num_items == arrays["item"].max() + 1 and log.num_users == arrays["user"].max() + 1


@pytest.mark.parametrize("change, message", [
    (dict(item=np.arange(5)), "same length"),
    (dict(user=np.array([0, 1, -1, 0, 1, 2])), "non-negative"),
    (dict(timestamp=np.array([0, 1, np.nan, 3, 4, 5.0])), "non-finite"),
    (dict(labels=np.array([0, 1, 2, 0, 1, 0])), "0 or 1"),
    (dict(labels=np.zeros((5, 2))), "labels must be"),
    (dict(request=np.arange(4)), "request must have length"),
    (dict(num_items=2), "num_items=2"),
    (dict(item=np.array([0.5, 1, 2, 3, 4, 0])), "integers"),
])
def test_invalid_logs_raise_naming_the_problem(change, message):
    with pytest.raises(ValueError, match=message):
        InteractionLog(**{**_arrays(), **change})


def test_from_dataset_selects_tasks_by_name_or_index():
    dataset = simulate(SimulatorConfig.preset("tests", num_users=40, num_items=30)).dataset
    everything = InteractionLog.from_dataset(dataset)
    assert everything.task_names == dataset.spec.action_names
    np.testing.assert_array_equal(everything.labels, dataset.interactions.actions)
    like = InteractionLog.from_dataset(dataset, task="like")
    np.testing.assert_array_equal(like.labels[:, 0], dataset.interactions.actions[:, 1])
    pair = InteractionLog.from_dataset(dataset, task=[3, "click"])
    assert pair.task_names == ("share", "click")
    assert like.num_items == dataset.spec.num_items and like.num_users == dataset.spec.num_users
    # exposures of one request share a request id
    starts = dataset.interactions.request_starts
    assert np.all(like.request[starts[:-1]] == np.arange(len(starts) - 1))
    with pytest.raises(ValueError, match="unknown task"):
        InteractionLog.from_dataset(dataset, task="purchase")


def test_rows_between_respects_open_and_closed_ends():
    log = InteractionLog(user=[0, 0, 0, 0], item=[0, 1, 2, 3], timestamp=[1.0, 2.0, 3.0, 4.0], labels=[0, 1, 0, 1])
    np.testing.assert_array_equal(log.rows_between(2.0, 4.0), [1, 2])
    np.testing.assert_array_equal(log.rows_between(2.0, 4.0, closed="right"), [2, 3])
    np.testing.assert_array_equal(log.rows_between(None, 3.0), [0, 1])
