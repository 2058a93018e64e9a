"""Run settings that suit the data: what `genrank-jax train` and `bench/ablation.py` use when not told.

The rule is one threshold on the size of the training split (exposures in train requests):

- below SMALL_DATA_EXPOSURES (MovieLens-100K: ~80k; the simulator's `tests` feed: ~24k) the
  settings are the ones picked on ml-100k's validation slice (bench/ablation.py's per-epoch
  validation curves, never the eval split): preset "tiny" ("small" with max_history 256 took ~30x
  the time per epoch, and 400 steps of it without stopping overfit to 0.673 like AUC on eval, below
  the logistic baseline), max_history 128 (ml-100k's median history is ~64), 64 candidates,
  lr 3e-3 (1e-3 since issue 26, below),
  weight decay 1e-4, flatter ALiBi slopes (alibi_max_bias 16, time_bias_scale 0.1: the library's
  steeper defaults scored 0.759 vs 0.768 like AUC on the slice at epoch 5), and up to 20 epochs with
  early stopping (patience 3) instead of a fixed step count: the slice, not a guess, decides when to
  stop. Then a refit: the same epoch count again on all of train, the slice included (it is the
  data nearest the eval period; cheap at this size). Both evaluations are reported.
- both sizes (issue 26, validation slices of ml-100k, ml-latest-small and the default simulator;
  bench/results/defaults_validation_sweep.md): GenRank reads the aggregate features of the
  `features` baseline (a projection on every token and a linear path to the logits) and has no
  user-id embedding (most eval users of a temporal split were never trained on: a random row per
  unseen user is noise). At small size its sequence head starts at zero beside the linear path
  and the learning rate is 1e-3 (ml-latest-small validation like AUC 0.7282 with the old defaults,
  0.7864 now; ml-100k 0.7680 -> 0.7930); at large size the head starts random (the simulator's
  0.7762 against 0.7617 with a zero head).
- at or above it (the simulator's default feed, ~256k; ml-1m and larger) the settings tuned on the
  simulator: preset "small", max_history 56, lr 3e-3, 1000 steps, still scored on the validation
  slice every epoch and stopped with the same patience.

Any option given explicitly on the command line wins over the rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from genrank_jax.data.schema import RankingDataset

SMALL_DATA_EXPOSURES = 200_000


@dataclasses.dataclass(frozen=True)
class RunDefaults:
    """Settings for one kind of dataset. epochs > 0: at most that many epochs (early stopping picks);
    epochs == 0: `steps` steps. config: GenRankConfig field overrides (the bias slopes)."""

    name: str
    preset: str
    learning_rate: float
    weight_decay: float
    max_history: int
    max_candidates: int
    epochs: int
    steps: int
    patience: int
    validation_fraction: float
    config: Mapping[str, float] = dataclasses.field(default_factory=dict)
    refit: bool = False  # after early stopping, train again on all of train for the chosen epoch count


# GenRank reads the features baseline's aggregates and has no user-id rows (issue 26's validation
# sweep, bench/results/defaults_validation_sweep.md): on each dataset's validation slice
AGGREGATES = {"use_aggregates": True, "use_user_embedding": False}
SMALL_DATA = RunDefaults(name="small data", preset="tiny", learning_rate=1e-3, weight_decay=1e-4, max_history=128,
                         max_candidates=64, epochs=20, steps=0, patience=3, validation_fraction=0.15,
                         config={"alibi_max_bias": 16.0, "time_bias_scale": 0.1, **AGGREGATES, "zero_deep_head": True},
                         refit=True)
LARGE_DATA = RunDefaults(name="large data", preset="small", learning_rate=3e-3, weight_decay=1e-4, max_history=56,
                         max_candidates=128, epochs=0, steps=1000, patience=3, validation_fraction=0.15,
                         config=dict(AGGREGATES))


def train_exposures(dataset: RankingDataset) -> int:
    """Exposures in the train split's requests."""
    starts = dataset.interactions.request_starts
    requests = np.asarray(dataset.train_requests)
    return int((starts[requests + 1] - starts[requests]).sum())


def defaults_for(dataset: RankingDataset) -> RunDefaults:
    """SMALL_DATA when the train split has fewer than SMALL_DATA_EXPOSURES exposures, else LARGE_DATA."""
    return SMALL_DATA if train_exposures(dataset) < SMALL_DATA_EXPOSURES else LARGE_DATA


__all__ = ["LARGE_DATA", "SMALL_DATA", "SMALL_DATA_EXPOSURES", "RunDefaults", "defaults_for", "train_exposures"]
