"""Placebo features: random inputs shaped like the real ones, the control every delta is read against.

An input with no information is not free: a per-item random code gives a probe extra per-item
capacity to overfit, and on the simulator such a code scored 0.004 to 0.009 AUC below the
baseline, with an interval excluding 0. Every feature pays that price, so against the no-feature
baseline a real leak's LIS is understated and a representation that teaches nothing reads as
"significantly harmful". A placebo probe gets a random feature of the same kind (per item or per
interaction), the same width and the same per-column scale (every feature is standardized to
columns of std 1/sqrt(width) before the probes see it, and a constant column stays zero, so the
placebo is a standard Gaussian draw with the feature's constant columns zeroed); it trains with
the same seeds, and the feature-minus-placebo difference, paired by seed, measures information only.

Features of one shape share one placebo: its probes are trained once, whatever the number of
features of that shape (a run of 3 leak kinds x 2 horizons has 3 shapes, so 3 placebo probes per
seed beside the 6 feature probes and the baseline: 80 probes instead of 56 at 8 seeds).
"""

from __future__ import annotations

import numpy as np

from genrank_jax.leakage.bank import Feature

PLACEBO_SEED = 20_260_712  # fixed: a run's placebo draws depend only on the shapes of its features
_SIDES = {"item": 0, "interaction": 1}


def placebo_key(feature: Feature) -> tuple[str, int, tuple[bool, ...]]:
    """What a feature's placebo must match: (side, width, which columns vary)."""
    values = feature.values
    varies = (tuple(bool(v) for v in (values.max(axis=0) > values.min(axis=0))) if len(values)
              else (True,) * feature.width)
    return feature.per, feature.width, varies


def placebo_name(key: tuple[str, int, tuple[bool, ...]]) -> str:
    """"placebo[item,16]"; with constant columns "placebo[item,23,zero:0,17-22]"."""
    per, width, varies = key
    constant = [c for c, v in enumerate(varies) if not v]
    spans = []  # runs of consecutive constant columns as "a-b"
    for column in constant:
        if spans and spans[-1][1] == column - 1:
            spans[-1][1] = column
        else:
            spans.append([column, column])
    zero = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return f"placebo[{per},{width}" + (f",zero:{zero}" if zero else "") + "]"


def placebo_values(key: tuple[str, int, tuple[bool, ...]], rows: int, seed: int = PLACEBO_SEED) -> np.ndarray:
    """[rows, width] float32 standard Gaussian draws, the key's constant columns zero."""
    per, width, varies = key
    mask = np.fromiter(varies, bool, width)
    rng = np.random.default_rng([seed, _SIDES[per], width, *mask.astype(int)])
    values = rng.standard_normal((rows, width), dtype=np.float32)
    values[:, ~mask] = 0.0
    return values


def placebos_for(features: dict[str, Feature], seed: int = PLACEBO_SEED) -> tuple[dict[str, Feature], dict[str, str]]:
    """({placebo name: Feature}, {feature name: its placebo's name}): one placebo per distinct shape."""
    keys = {name: placebo_key(feature) for name, feature in features.items()}
    placebos = {}
    for name, key in keys.items():
        label = placebo_name(key)
        if label in features:
            raise ValueError(f"feature name {label!r} is reserved for a placebo")
        if label not in placebos:
            placebos[label] = Feature(placebo_values(key, features[name].values.shape[0], seed), key[0])
    return placebos, {name: placebo_name(key) for name, key in keys.items()}
