"""The GenRank probe (`ProbeConfig(model="genrank")`): a tiny GenRank ranker reading the feature.

The log is grouped into requests (rows of one user at one time, split into pieces of at most
`genrank_candidates`), tokenized by `genrank_jax.data.samples.SampleBuilder` (action-oriented
tokens, the user's last `genrank_history` exposures as history) and scored by
`genrank_jax.model.GenRank` built from `GenRankConfig.preset(genrank_preset)`. The feature enters
through the model's `extra_embeddings` hook after a learned projection [Dm, W]:
- a per-item feature is added to the item embedding of every token that carries that item
  (history and candidates), as an extra item feature would be;
- a per-interaction feature (a leak about that exposure) is added to the candidate token only.

Probes of a bank run one at a time (`parallel=True` loops too): a vmapped bank of transformers
would need stacked NNX states and batched attention, and on this 2-core CPU each probe's matmuls
are already as large as the bank's stacks, so stacking would not be faster here. What all probes
share is computed once: the token batches of every epoch and the compiled step (one padded shape).

Shapes: Bq requests per batch, S = history + candidates tokens, M candidate slots, Dm padded
feature width, W model width, T tasks.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.schema import FeatureSpec, Interactions, ItemCatalog, RankingDataset
from genrank_jax.leakage import bank
from genrank_jax.model.config import GenRankConfig
from genrank_jax.model.genrank import GenRank
from genrank_jax.model.losses import candidate_bce


class GenRankProbe(nnx.Module):
    """GenRank plus a bias-free projection of the probed feature to the model width."""

    def __init__(self, config: GenRankConfig, feature_width: int, *, rngs: nnx.Rngs, feature_rngs: nnx.Rngs):
        self.ranker = GenRank(config, rngs=rngs)
        self.project = nnx.Linear(feature_width, config.width, use_bias=False, rngs=feature_rngs)

    def __call__(self, batch, token_features):
        """[Bq, S, T] logits; token_features [Bq, S, Dm] (zero where a token gets no feature)."""
        return self.ranker(batch, self.project(token_features))


@dataclasses.dataclass(frozen=True)
class RequestLog:
    """The interaction log as a `RankingDataset`: order [N] maps dataset rows to log rows."""

    dataset: RankingDataset
    order: np.ndarray


def request_log(log, max_candidates: int) -> RequestLog:
    """Group rows by (user, time, request id) into requests of at most `max_candidates` rows."""
    rows = log.num_rows
    request = log.request if log.request is not None else np.zeros(rows, np.int64)
    order = np.lexsort((request, log.timestamp, log.user))
    user, time, req = log.user[order], log.timestamp[order], request[order]
    new = np.ones(rows, bool)
    new[1:] = (user[1:] != user[:-1]) | (time[1:] != time[:-1]) | (req[1:] != req[:-1])
    first = np.flatnonzero(new)
    position = np.arange(rows) - first[np.cumsum(new) - 1]
    starts = np.append(np.flatnonzero(new | (position % max_candidates == 0)), rows)
    spec = FeatureSpec(num_items=log.num_items, num_users=log.num_users, action_names=tuple(log.task_names))
    interactions = Interactions(user_ids=user.astype(np.int32), item_ids=log.item[order].astype(np.int32),
                                timestamps=time, actions=log.labels[order], request_starts=starts.astype(np.int64))
    catalog = ItemCatalog(side_features=np.zeros((log.num_items, 0), np.int32))
    empty = np.zeros(0, np.int64)
    return RequestLog(RankingDataset("leakage", spec, catalog, interactions, empty, empty), order)


def _requests_of(requests: RequestLog, rows: np.ndarray) -> np.ndarray:
    """Requests whose rows are in `rows` (a request shares one time, so it is all in or all out)."""
    member = np.zeros(len(requests.order), bool)
    member[rows] = True
    starts = requests.dataset.interactions.request_starts[:-1]
    return np.flatnonzero(member[requests.order[starts]])


def _batches(builder: SampleBuilder, requests: RequestLog, request_ids, config) -> list[tuple]:
    """(TokenBatch, item_index [Bq, S], row_index [Bq, S]) per batch of `genrank_batch` requests.

    item_index: the item of each token (-1: none); row_index: the log row of each candidate token
    (-1 elsewhere): where per-item and per-interaction features are read.
    """
    size, seq_len = config.genrank_batch, config.genrank_history + config.genrank_candidates
    starts = requests.dataset.interactions.request_starts
    out = []
    for begin in range(0, len(request_ids), size):
        group = request_ids[begin:begin + size]
        batch = builder.build(group, seq_len, size, candidate_slots=config.genrank_candidates)
        row_index = np.full(batch.item_ids.shape, -1, np.int64)
        slots = np.arange(config.genrank_candidates)
        valid = slots[None, :] < batch.num_candidates[:, None]
        b, m = np.nonzero(valid)
        row_index[b, batch.candidate_index[b, m]] = requests.order[starts[group[b]] + m]
        out.append((batch, batch.item_ids.astype(np.int64), row_index))
    return out


def _token_features(table, index):
    """[Bq, S, Dm] rows of table [R, Dm] at index [Bq, S]; zero where index < 0."""
    return table[jnp.maximum(index, 0)] * (index >= 0)[..., None].astype(table.dtype)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _train_step(graphdef, state, batch, table, index):
    def loss_of(model):
        return candidate_bce(model(batch, _token_features(table, index)), batch)[0]

    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(loss_of)(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss


@functools.partial(jax.jit, static_argnums=0)
def _predict(graphdef, state, batch, table, index):
    model, _ = nnx.merge(graphdef, state)
    logits = model(batch, _token_features(table, index))  # [Bq, S, T]
    return jnp.take_along_axis(logits, jnp.minimum(batch.candidate_index, logits.shape[1] - 1)[..., None], axis=1)


def _feature_table(run, slot: int):
    """(table [R, Dm], item-side?) of a feature slot; slot 0 (baseline) is one zero row."""
    data = run.device_data
    if slot == 0:
        return jnp.zeros((1, run.sizes.feature_width), jnp.float32), True
    item_side = run.feature_item_side[slot] == 1.0
    num_item_slots = int(sum(run.feature_item_side[1:]))
    if item_side:  # stored as bfloat16 bit patterns (see `bank.prepare_run`)
        return bank.widened(data["item_features"][slot - 1]), True
    return bank.widened(data["row_features"][slot - 1 - num_item_slots]), False


def train_and_predict(run, seeds, slots, *, parallel: bool = True, on_epoch=None) -> np.ndarray:
    """[K, Ne, T] eval logits of GenRank probes (seeds[k], slots[k]) on `run` (see `bank.ProbeRun`)."""
    config = run.config
    requests = request_log(run.log, config.genrank_candidates)
    layout = SampleLayout(max_history=config.genrank_history, max_candidates=config.genrank_candidates)
    builder = SampleBuilder(requests.dataset, layout)
    model_config = GenRankConfig.preset(config.genrank_preset, requests.dataset.spec,
                                        max_tokens=max(128, config.genrank_history + config.genrank_candidates))
    train_requests = _requests_of(requests, run.train_rows)
    eval_requests = _requests_of(requests, run.eval_rows)
    optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    states, graphdef = [], None
    for seed, slot in zip(seeds, slots):
        model = GenRankProbe(model_config, run.sizes.feature_width, rngs=nnx.Rngs(int(seed)),
                             feature_rngs=nnx.Rngs(int(seed) * 1_000_003 + int(slot) + 1))
        graphdef, state = nnx.split((model, nnx.Optimizer(model, optimizer, wrt=nnx.Param)))
        states.append(state)
    tables = [_feature_table(run, int(slot)) for slot in slots]
    for epoch in range(config.epochs):
        order = np.random.default_rng([config.data_seed, epoch]).permutation(train_requests)
        batches = _batches(builder, requests, order, config)  # shared by every probe
        for k, (table, item_side) in enumerate(tables):
            for batch, item_index, row_index in batches:
                states[k], _ = _train_step(graphdef, states[k], batch, table, item_index if item_side else row_index)
            if not parallel and on_epoch is not None:
                jax.block_until_ready(states[k])
                on_epoch(epoch)
        if parallel and on_epoch is not None:
            jax.block_until_ready(states)
            on_epoch(epoch)
    position = np.full(run.log.num_rows, -1, np.int64)
    position[run.eval_rows] = np.arange(len(run.eval_rows))
    logits = np.zeros((len(slots), len(run.eval_rows), run.sizes.num_tasks), np.float32)
    for batch, item_index, row_index in _batches(builder, requests, eval_requests, config):
        rows = row_index[np.arange(len(row_index))[:, None], np.minimum(batch.candidate_index, row_index.shape[1] - 1)]
        rows = np.where(np.arange(config.genrank_candidates)[None, :] < batch.num_candidates[:, None], rows, -1)
        keep = (rows >= 0) & (position[np.maximum(rows, 0)] >= 0)
        for k, (table, item_side) in enumerate(tables):
            scores = np.asarray(_predict(graphdef, states[k], batch, table, item_index if item_side else row_index))
            logits[k, position[rows[keep]]] = scores[keep]
    return logits
