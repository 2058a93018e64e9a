"""One forward path: training, the research variants, encoding, cached scoring and append all run
the blocks through `GenRank.forward` (issue 23), so no second copy of the block loop can drift."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.synthetic import SimulatorConfig, simulate
from genrank_jax.data.tokens import TokenBatch
from genrank_jax.model import GenRank
from genrank_jax.model.blocks import BLOCKS
from genrank_jax.model.config import GenRankConfig
from genrank_jax.model.history_variants import PER_TOKEN_FIELDS, shadow_batch, with_shadows
from genrank_jax.serving import split_batch
from genrank_jax.serving.export import export_scorer
from genrank_jax.serving.scorer import Scorer


@pytest.fixture(scope="module")
def feed():
    return simulate(SimulatorConfig.preset("tests"))


@pytest.fixture(scope="module")
def batch(feed):
    builder = SampleBuilder(feed.dataset, SampleLayout(max_history=12))
    requests = np.asarray(feed.dataset.train_requests)[:4]
    return builder.build(requests, int(builder.token_counts(requests).max()) + 2)


class PathCounter:
    """Counts `GenRank.forward` calls and block projections made outside one."""

    def __init__(self, monkeypatch, block: str):
        self.forward_calls, self.projections_outside = 0, 0
        self._inside = False
        forward, project = GenRank.forward, BLOCKS[block].project

        def counted_forward(model, *args, **kwargs):
            self.forward_calls += 1
            self._inside = True
            try:
                return forward(model, *args, **kwargs)
            finally:
                self._inside = False

        def watched_project(block_module, x):
            self.projections_outside += not self._inside
            return project(block_module, x)

        monkeypatch.setattr(GenRank, "forward", counted_forward)
        monkeypatch.setattr(BLOCKS[block], "project", watched_project)

    def calls_of(self, run) -> int:
        """How many `forward` calls `run()` made (none of its blocks may run outside one)."""
        before = self.forward_calls
        run()
        assert self.projections_outside == 0
        return self.forward_calls - before


@pytest.mark.parametrize("block", ["transformer", "hstu"])
def test_every_path_runs_the_blocks_through_forward(feed, batch, monkeypatch, tmp_path, block):
    config = GenRankConfig.preset("tiny", feed.dataset.spec, block=block, num_blocks=2)
    model = GenRank(config, rngs=nnx.Rngs(0))
    history, candidates = split_batch(batch)
    counter = PathCounter(monkeypatch, block)
    cache = model.encode_history(history, num_candidates=candidates.num_candidates,
                                 capacity=history.item_ids.shape[1] + 2)
    paths = {
        "training": lambda: model(batch),
        "history_loss": lambda: model.logits_with_history(batch),
        "encode": lambda: model.encode_history(history, num_candidates=candidates.num_candidates),
        "score": lambda: model.score(cache, candidates),
        "scorer": lambda: Scorer(model).score(cache, candidates),  # traced under jit: the same path
    }
    if block == "transformer":  # HSTU refuses append
        nothing_new = dataclasses.replace(history, lengths=np.zeros_like(history.lengths))
        paths["append"] = lambda: cache.append(nothing_new, model=model)
    assert {name: counter.calls_of(run) for name, run in paths.items()} == dict.fromkeys(paths, 1)
    # the exported artifacts trace serving's encode and score: one forward each
    assert counter.calls_of(lambda: export_scorer(model, tmp_path / "export")) == 2


def test_with_shadows_joins_every_per_token_field(batch):
    per_token = {f.name for f in dataclasses.fields(TokenBatch)} - {"user_ids", "lengths", "num_candidates",
                                                                     "candidate_index"}
    assert per_token == set(PER_TOKEN_FIELDS)
    joined, shadows = with_shadows(batch), shadow_batch(batch)
    seq_len = batch.seq_len
    for name in PER_TOKEN_FIELDS:
        if getattr(batch, name) is not None:
            np.testing.assert_array_equal(np.asarray(getattr(joined, name))[:, :seq_len], getattr(batch, name))
            np.testing.assert_array_equal(np.asarray(getattr(joined, name))[:, seq_len:], getattr(shadows, name))
    np.testing.assert_array_equal(joined.lengths, batch.lengths)
