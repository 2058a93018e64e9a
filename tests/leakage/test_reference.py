"""The `features` reference's point-in-time aggregates and its logistic fit, from their definitions.

Aggregates are checked against a per-row loop written from the module's rule (row s counts for
row r when s's request ends strictly before r's begins; without requests, when s is strictly
earlier), on a simulator log (requests of one time), the same log without requests and a random
log whose requests span several times; all three shuffled (rows need not be sorted).
"""

import numpy as np
import pytest
import scipy.optimize
import scipy.special

from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.leakage import InteractionLog
from genrank_jax.leakage import reference as reference_lib


def _shuffled(log: InteractionLog, seed: int, *, requests: bool = True) -> InteractionLog:
    order = np.random.default_rng(seed).permutation(log.num_rows)
    return InteractionLog(user=log.user[order], item=log.item[order], timestamp=log.timestamp[order],
                          labels=log.labels[order], request=log.request[order] if requests else None,
                          num_items=log.num_items, num_users=log.num_users, task_names=log.task_names)


def _simulated(seed: int, *, requests: bool = True) -> InteractionLog:
    log = InteractionLog.from_dataset(simulate(SimulatorConfig.preset("tests", seed=seed)).dataset)
    return _shuffled(log, seed + 1, requests=requests)


def _spanning(seed: int) -> InteractionLog:
    """Requests whose rows are minutes apart, on a coarse clock: ties across requests and users."""
    rng = np.random.default_rng(seed)
    num_requests = 400
    sizes = rng.integers(1, 6, num_requests)
    request = np.repeat(rng.permutation(num_requests), sizes)  # ids in no particular order of time
    rows = int(sizes.sum())
    start = np.repeat(rng.integers(0, 200, num_requests) * 1800.0, sizes)
    log = InteractionLog(user=np.repeat(rng.integers(0, 25, num_requests), sizes), item=rng.integers(0, 40, rows),
                         timestamp=start + rng.integers(0, 3, rows) * 600.0,
                         labels=(rng.random((rows, 2)) < [0.3, 0.1]).astype(np.uint8), request=request)
    return _shuffled(log, seed + 1)


LOGS = {"simulator": lambda: _simulated(3), "simulator without requests": lambda: _simulated(4, requests=False),
        "spanning requests": lambda: _spanning(5)}


def _brute_force(log: InteractionLog, rows) -> dict:
    """Per row of `rows`, by a loop from the definition."""
    known, asked = log.timestamp.copy(), log.timestamp.copy()
    if log.request is not None:
        last, first = {}, {}
        for request, time in zip(log.request.tolist(), log.timestamp.tolist()):
            last[request] = max(last.get(request, -np.inf), time)
            first[request] = min(first.get(request, np.inf), time)
        known = np.array([last[request] for request in log.request.tolist()])
        asked = np.array([first[request] for request in log.request.tolist()])
    out = {"counts": [], "positives": [], "item_age_hours": [], "hours_since_previous": []}
    for r in rows:
        earlier = known < asked[r]
        item, user = earlier & (log.item == log.item[r]), earlier & (log.user == log.user[r])
        out["counts"].append([item.sum(), user.sum()])
        out["positives"].append([log.labels[item].sum(0), log.labels[user].sum(0)])
        out["item_age_hours"].append((asked[r] - known[item].min()) / 3600 if item.any() else -1.0)
        out["hours_since_previous"].append((asked[r] - known[user].max()) / 3600 if user.any() else -1.0)
    return {name: np.array(values) for name, values in out.items()}


@pytest.mark.parametrize("name", LOGS)
def test_counts_are_the_definition(name):
    log = LOGS[name]()
    counts = reference_lib.log_counts(log)
    rows = np.random.default_rng(7).choice(log.num_rows, size=min(log.num_rows, 400), replace=False)
    expected = _brute_force(log, rows)
    got = counts.take(rows)
    np.testing.assert_array_equal(got.counts, expected["counts"])
    np.testing.assert_array_equal(got.positives, expected["positives"])
    for field in ("item_age_hours", "hours_since_previous"):
        np.testing.assert_allclose(getattr(got, field), expected[field], rtol=1e-12, atol=1e-9, err_msg=field)
    # the rows drawn reach every case: first sightings and repeat visits, users new and returning
    assert (got.counts == 0).any() and (got.counts > 0).any()


@pytest.mark.parametrize("name", LOGS)
def test_labels_at_and_after_a_rows_time_never_reach_it(name):
    log = LOGS[name]()
    before = reference_lib.log_counts(log)
    for at in np.quantile(log.timestamp, [0.1, 0.5, 0.9], method="nearest"):
        later = log.timestamp >= at
        flipped = InteractionLog(user=log.user, item=log.item, timestamp=log.timestamp,
                                 labels=np.where(later[:, None], 1 - log.labels, log.labels), request=log.request)
        after = reference_lib.log_counts(flipped)
        kept = log.timestamp <= at  # rows at `at` included: their own labels were flipped
        np.testing.assert_array_equal(after.positives[kept], before.positives[kept])
        np.testing.assert_array_equal(after.counts, before.counts)  # counts and times read no label
        np.testing.assert_array_equal(after.item_age_hours, before.item_age_hours)
        # the flip does reach later rows: this test sees a leak when there is one
        assert (after.positives[~kept] != before.positives[~kept]).any()


def _objective(theta, x, y, offset, l2):
    z = offset + theta[0] + x @ theta[1:]
    return np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * theta @ theta


def _gradient(theta, x, y, offset, l2):
    residual = scipy.special.expit(offset + theta[0] + x @ theta[1:]) - y
    return np.concatenate([[residual.mean()], x.T @ residual / len(y)]) + l2 * theta


@pytest.mark.parametrize("case", ["noisy", "separable", "one class"])
def test_newton_fit_is_the_optimum(case):
    rng = np.random.default_rng({"noisy": 11, "separable": 12, "one class": 13}[case])
    x = rng.standard_normal((600, 5)) * [1.0, 3.0, 0.2, 1.0, 1.0]
    if case == "noisy":
        y = (rng.random(600) < scipy.special.expit(x @ rng.standard_normal(5) - 1.0)).astype(float)
    elif case == "separable":
        y = (x[:, 0] + 0.5 * x[:, 1] > 0.3).astype(float)
    else:
        y = np.zeros(600)
    offset, l2 = float(np.log((y.sum() + 1) / (len(y) - y.sum() + 1))), 1e-3
    theta = reference_lib.fit_logistic(x, y, offset=offset, l2=l2)
    assert np.isfinite(theta).all()
    np.testing.assert_allclose(_gradient(theta, x, y, offset, l2), 0.0, atol=1e-9)
    # an independent optimizer finds no lower objective
    other = scipy.optimize.minimize(_objective, np.zeros(6), args=(x, y, offset, l2), jac=_gradient, method="BFGS",
                                    options={"gtol": 1e-10})
    assert _objective(theta, x, y, offset, l2) <= other.fun + 1e-12


def test_reference_logits_fit_on_train_rows_and_rank_the_simulator():
    from genrank_jax import metrics

    log = _simulated(8)
    cutoff = float(np.quantile(log.timestamp, 0.8))
    train, evaluated = log.rows_between(None, cutoff), log.rows_between(cutoff, None)
    logits = reference_lib.reference_logits(log, train, evaluated)
    assert logits.shape == (len(evaluated), log.num_tasks) and np.isfinite(logits).all()
    aucs = [metrics.auc(log.labels[evaluated, t], logits[:, t]) for t in range(log.num_tasks)]
    assert min(aucs) > 0.6, aucs  # 0.66 to 0.77 per task on simulator draws 0, 1, 2 and 8
    # the train rows alone decide the fit: eval labels are never read
    flipped = InteractionLog(user=log.user, item=log.item, timestamp=log.timestamp, request=log.request,
                             labels=np.where((log.timestamp >= cutoff)[:, None], 1 - log.labels, log.labels))
    again = reference_lib.reference_logits(flipped, train, evaluated)
    first_time = log.timestamp[evaluated] == log.timestamp[evaluated].min()  # nothing of the window before them
    np.testing.assert_allclose(again[first_time], logits[first_time], rtol=1e-12)
    scaling = reference_lib.reference_scaling(log, reference_lib.log_counts(log), train)
    assert scaling.names == reference_lib.column_names(log.task_names) and len(scaling.names) == 2 * 4 + 4
