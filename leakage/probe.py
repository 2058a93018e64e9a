"""One probe ranker, as pure functions over a small state pytree (the bank maps exactly these).

A probe is a small real ranker: item-id and user-id embeddings, the mean embedding of the user's
last L engaged items (a pooled recent history), an optional feature projected to the embedding
width, and an MLP over [item, user, history, feature, item-side * user-side] to one logit per task.
A per-item feature joins the item side, a per-interaction feature the user side, so the product
term can compare a leaked item representation with the user's taste (or a leaked next item with
the candidate) the way a factorization model does.

Embedding tables are updated sparsely: a step gathers the rows its batch touches (once, by the
shared batch stream's unique ids), takes gradients with respect to those rows only and writes them
back with a lazy Adam (moments of untouched rows are left alone). A table is three arrays, value,
adam m and adam v, so the update is three plain elementwise passes (rows stored interleaved as
[value, m, v] made XLA recompute the moments inside one concatenating loop and ran slower).
Dense Adam over the whole table is the slow path this avoids.

`init_probe` builds one probe (the bank vmaps it); `forward` / `update` / `predict` take a stack
of c probes with an explicit probe axis, written so that everything the probes share (the batch's
indices, features, labels) is read once and the per-probe work is batched matmuls. The bank
(`bank.py`) runs them on chunks of its probe axis; a probe trained alone is a stack of c = 1.

Shapes (per probe): d embedding width, Dm padded feature width, L history length, T tasks,
Qi / Qu unique items / users of a batch (padded), B batch, F distinct features of the run (+1: slot 0
is the baseline's all-zero feature).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

_B1, _B2, _EPS = 0.9, 0.999, 1e-8
TABLE_OPTIMIZERS = ("auto", "adam", "rowwise_adagrad")
ROWWISE_ABOVE_BYTES = 64 << 20  # "auto": row-wise Adagrad once Adam's tables would pass 64 MiB a probe
# Adagrad's steps shrink as a row's squared gradients add up, so it takes a larger rate than Adam's
# 4e-3. Chosen on the simulator's "catalog" preset at 1/10 of its users and items (the same
# exposures per item), 2 seeds, 1 epoch: 0.035 gave every row's AUC within 0.005 of Adam's
# (baseline 0.6102 vs 0.6090); 4e-3 left the baseline at 0.578, 0.1 at 0.614 but the
# co-occurrence leak 0.03 below Adam's.
ROWWISE_LEARNING_RATE = 0.035


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Size and training of each probe. Every probe of a run shares it.

    model: "mlp" (the probe described above) or "genrank" (a GenRank ranker, `genrank_probe.py`).
    dim: embedding width d. hidden: MLP widths. history: L, recent engaged items pooled.
    epochs, batch_size, learning_rate: Adam over the training rows (one shared shuffled stream;
    `data_seed` fixes its order). init_scale: std of the embedding tables at init.
    eval_batch_size: rows scored per evaluation chunk.
    table_learning_rate: the tables' learning rate (default: `learning_rate` with Adam,
    `ROWWISE_LEARNING_RATE` with row-wise Adagrad).
    table_optimizer: how the embedding tables learn (the dense layers always use Adam).
    "adam": a lazy AdamW, two moments per table entry (12 bytes an entry with the value).
    "rowwise_adagrad": one Adagrad accumulator per table row, the mean of the row's squared
    gradients (4 bytes an entry plus 4 a row): the large-catalog optimizer of production
    recommenders, a third of Adam's memory, so three times the probes train at once.
    "auto" (default): "adam" while a probe's tables take at most `ROWWISE_ABOVE_BYTES` with Adam
    (ml-100k's take 0.5 MB), "rowwise_adagrad" above (a 10^6-item catalog's take 230 MB);
    `resolved_table_optimizer` decides, and the LIS report records the choice.
    genrank_*: the GenRank probe only: model preset, history tokens, candidates per request piece
    and requests per batch (`dim`, `hidden`, `history` and `batch_size` are the MLP's).
    """

    model: Literal["mlp", "genrank"] = "mlp"
    dim: int = 16
    hidden: tuple[int, ...] = (128, 64)
    history: int = 8
    epochs: int = 2
    batch_size: int = 1024
    learning_rate: float = 4e-3
    weight_decay: float = 0.0
    init_scale: float = 0.05
    data_seed: int = 0
    eval_batch_size: int = 4096
    genrank_preset: str = "tiny"
    genrank_history: int = 48
    genrank_candidates: int = 16
    genrank_batch: int = 64
    table_optimizer: Literal["auto", "adam", "rowwise_adagrad"] = "auto"
    table_learning_rate: float | None = None

    def __post_init__(self):
        if self.model not in ("mlp", "genrank"):
            raise ValueError(f"model must be 'mlp' or 'genrank', got {self.model!r}")
        if self.table_learning_rate is not None and not self.table_learning_rate > 0:
            raise ValueError(f"table_learning_rate must be positive, got {self.table_learning_rate}")
        if self.table_optimizer not in TABLE_OPTIMIZERS:
            raise ValueError(f"table_optimizer must be one of {TABLE_OPTIMIZERS}, got {self.table_optimizer!r}")
        for name in ("dim", "epochs", "batch_size", "eval_batch_size", "genrank_candidates", "genrank_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.history < 0 or any(width < 1 for width in self.hidden):
            raise ValueError(f"need history >= 0 and hidden widths >= 1, got {self.history}, {self.hidden}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")


@dataclasses.dataclass(frozen=True)
class ProbeSizes:
    """Static sizes of a run: vocabularies, tasks, padded feature width."""

    num_items: int
    num_users: int
    num_tasks: int
    feature_width: int  # Dm, >= 1


def _mlp_layers(config: ProbeConfig, sizes: ProbeSizes) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of each MLP layer: [item, user, history, feature, product] -> tasks."""
    widths = (5 * config.dim, *config.hidden, sizes.num_tasks)
    return list(zip(widths[:-1], widths[1:]))


def init_probe(seed_key: jax.Array, feature_key: jax.Array, feature_slot, feature_width, item_side,
               learning_rate, weight_decay, *, config: ProbeConfig, sizes: ProbeSizes) -> dict:
    """State of one probe.

    seed_key draws the tables and the MLP, feature_key the feature projection. Probes of one seed get
    the same seed_key on purpose (common random numbers: their paired AUC difference then measures
    the feature, not the init); the bank vmaps this over [K] keys, so each seed is its own stream
    (the flax pitfall of every copy drawing the same key is tested against).
    feature_slot: int index into the run's features (0 = none); feature_width: its true width
    (columns beyond it are padding and masked); item_side: 1.0 per-item feature, 0.0 per-interaction.
    """
    d, dm = config.dim, sizes.feature_width
    layers = _mlp_layers(config, sizes)
    shapes = {"item": (sizes.num_items + 1, d), "user": (sizes.num_users + 1, d)}  # last row: padding id
    shapes.update({f"w{layer}": shape for layer, shape in enumerate(layers)})
    # one draw per key, cut into pieces: a random.normal per array made this function take 2.4 s
    # to compile on the CPU (each draw is its own threefry), 0.3 s now. (Threefry draws are
    # prefix-stable, so these equal the first values of one longer draw.)
    sizes_flat = [int(np.prod(shape)) for shape in shapes.values()]
    seed_draw = jax.random.normal(seed_key, (sum(sizes_flat),), jnp.float32)
    feature_draw = jax.random.normal(feature_key, (dm * d,), jnp.float32)
    pieces = jnp.split(seed_draw, np.cumsum(sizes_flat)[:-1])
    draws = {name: piece.reshape(shape) for (name, shape), piece in zip(shapes.items(), pieces)}

    def table(name):  # value and its optimizer state: adam m and v, or one accumulator a row
        value = config.init_scale * draws[name]
        if table_optimizer(config) == "rowwise_adagrad":
            return {"value": value, "accumulator": jnp.zeros(value.shape[:1], jnp.float32)}
        return {"value": value, "m": jnp.zeros_like(value), "v": jnp.zeros_like(value)}

    dense = {}
    for layer, (fan_in, fan_out) in enumerate(layers):
        dense[f"w{layer}"] = draws[f"w{layer}"] / np.sqrt(fan_in)
        dense[f"b{layer}"] = jnp.zeros((fan_out,), jnp.float32)
    mask = (jnp.arange(dm) < feature_width).astype(jnp.float32)
    fan_in = jnp.maximum(feature_width, 1).astype(jnp.float32)
    dense["proj"] = feature_draw[:dm * d].reshape(dm, d) * mask[:, None] / jnp.sqrt(fan_in)
    return {
        "tables": {"item": table("item"), "user": table("user")},
        "dense": dense,
        "adam": {"m": jax.tree.map(jnp.zeros_like, dense), "v": jax.tree.map(jnp.zeros_like, dense),
                 "count": jnp.zeros((), jnp.int32)},
        "consts": {"feature_slot": jnp.asarray(feature_slot, jnp.int32), "feature_mask": mask,
                   "item_side": jnp.asarray(item_side, jnp.float32),
                   "learning_rate": jnp.asarray(learning_rate, jnp.float32),
                   "table_learning_rate": jnp.asarray(learning_rate if config.table_learning_rate is None
                                                      else config.table_learning_rate, jnp.float32),
                   "weight_decay": jnp.asarray(weight_decay, jnp.float32)},
    }


def _per_probe(values, shape_like, axis: int = 0):
    """Per-probe scalars [c] shaped to broadcast against an array whose probe axis is `axis`."""
    shape = [1] * shape_like.ndim
    shape[axis] = -1
    return jnp.reshape(values, shape)


def forward(dense: dict, consts: dict, item_rows, user_rows, inputs: dict):
    """[c, B, T] logits of a stack of c probes that share one batch.

    dense / consts: the probes' leaves with a leading probe axis [c, ...]; item_rows [Qi, c, d],
    user_rows [Qu, c, d]: embedding rows with the probe axis second, so each shared index of the
    batch gathers one contiguous [c, d] slab for all probes at once (and the gradient is one
    scatter-add of [c * d]-wide rows, not c scatters of d-wide ones). inputs (shared): local_item
    [B], local_user [B], local_history [B, L] (indices into those rows), history_mask [B, L]
    float, features [F, B, Dm]. The MLP runs as batched matmuls [c, B, in] x [c, in, out]: on
    this CPU that form ran ~3x the speed of c separate probe matmuls in one program.
    """
    def rows_of(rows, index):  # [Q, c, d] gathered at index [...] -> [..., c, d]; indices are in range
        return rows.at[index].get(mode="promise_in_bounds")

    e_item = jnp.swapaxes(rows_of(item_rows, inputs["local_item"]), 0, 1)  # [c, B, d]
    e_user = jnp.swapaxes(rows_of(user_rows, inputs["local_user"]), 0, 1)
    mask = inputs["history_mask"]
    if mask.shape[-1]:
        pooled = jnp.einsum("blcd,bl->cbd", rows_of(item_rows, inputs["local_history"]), mask)
        history = pooled / jnp.maximum(mask.sum(-1), 1.0)[None, :, None]
    else:
        history = jnp.zeros_like(e_item)
    raw = inputs["features"][consts["feature_slot"]] * consts["feature_mask"][:, None, :]  # [c, B, Dm]
    feature = jnp.einsum("cbm,cmd->cbd", raw, dense["proj"])
    side = _per_probe(consts["item_side"], e_item)
    item_side = e_item + side * feature
    user_side = e_user + history + (1.0 - side) * feature
    x = jnp.concatenate([e_item, e_user, history, feature, item_side * user_side], axis=-1)  # [c, B, 5d]
    layers = (len(dense) - 1) // 2
    for layer in range(layers):
        x = jnp.einsum("cbi,cio->cbo", x, dense[f"w{layer}"]) + dense[f"b{layer}"][:, None, :]
        if layer < layers - 1:
            x = jax.nn.relu(x)
    return x


def loss_fn(dense, item_rows, user_rows, consts, inputs, labels, weights):
    """(sum over probes, [c] per probe) of the sum over tasks of the weighted mean binary
    cross-entropy; labels [B, T], weights [B]. Probes share no parameter, so the gradient of the
    sum is each probe's own gradient."""
    logits = forward(dense, consts, item_rows, user_rows, inputs)
    per_example = jnp.sum(jnp.logaddexp(0.0, logits) - labels * logits, axis=-1)  # [c, B]
    losses = per_example @ weights / jnp.maximum(jnp.sum(weights), 1.0)
    return jnp.sum(losses), losses


def _adam(value, grad, m, v, count, learning_rate, weight_decay):
    """AdamW: decoupled weight decay, applied only where a step touches (lazy for table rows).
    count, learning_rate, weight_decay broadcast against value (per-probe scalars)."""
    m = _B1 * m + (1 - _B1) * grad
    v = _B2 * v + (1 - _B2) * grad * grad
    m_hat = m / (1 - _B1 ** count)
    v_hat = v / (1 - _B2 ** count)
    return value - learning_rate * (m_hat / (jnp.sqrt(v_hat) + _EPS) + weight_decay * value), m, v


def _rowwise_adagrad(value, grad, accumulator, learning_rate, weight_decay):
    """Row-wise Adagrad (as large embedding tables use it): value, grad [..., d], accumulator [...],
    one per row, adding the mean of the row's squared gradient; decoupled weight decay as `_adam`.
    A row with a zero gradient (the padding id) keeps its accumulator and moves by the decay only."""
    accumulator = accumulator + jnp.mean(grad * grad, axis=-1)
    step = grad / (jnp.sqrt(accumulator)[..., None] + _EPS)
    return value - learning_rate * (step + weight_decay * value), accumulator


def table_optimizer(config: ProbeConfig) -> str:
    """The table optimizer of a config whose "auto" is resolved (`resolved_table_optimizer`)."""
    if config.table_optimizer == "auto":
        raise ValueError("table_optimizer 'auto' is resolved by the run (bank.prepare_run) before probes are made")
    return config.table_optimizer


def table_bytes(config: ProbeConfig, sizes: ProbeSizes, optimizer: str) -> int:
    """Bytes of one probe's two embedding tables (item and user, padding rows included) with their
    optimizer state."""
    rows = sizes.num_items + 1 + sizes.num_users + 1
    if optimizer == "rowwise_adagrad":
        return 4 * rows * (config.dim + 1)
    return 4 * 3 * rows * config.dim


def resolved_table_optimizer(config: ProbeConfig, sizes: ProbeSizes) -> ProbeConfig:
    """The config with "auto" replaced (Adam while its tables take at most ROWWISE_ABOVE_BYTES),
    and row-wise Adagrad's table learning rate set (ROWWISE_LEARNING_RATE unless given)."""
    optimizer = config.table_optimizer
    if optimizer == "auto":
        optimizer = "rowwise_adagrad" if table_bytes(config, sizes, "adam") > ROWWISE_ABOVE_BYTES else "adam"
    rate = config.table_learning_rate
    if optimizer == "rowwise_adagrad" and rate is None:
        rate = ROWWISE_LEARNING_RATE
    return dataclasses.replace(config, table_optimizer=optimizer, table_learning_rate=rate)


def update(params: dict, item_block, user_block, batch: dict):
    """One Adam step of c stacked probes on their gathered embedding rows.

    params: the probes' states without their tables ("dense", "adam", "consts"), leaves [c, ...];
    item_block / user_block: {"value", "m", "v"}, each [Qi or Qu, c, d]: the rows of the batch's
    unique ids (probe axis second, as `forward` reads them), or {"value", "accumulator" [Q, c]}
    with row-wise Adagrad; batch: the `forward` inputs, labels [B, T], weights [B].
    Returns (new params, new item_block, new user_block, [c] losses). Only these rows move: a lazy
    Adam, whose untouched rows keep their moments (the bank writes the blocks back).
    """
    consts = params["consts"]
    (_, losses), (g_dense, g_item, g_user) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(
        params["dense"], item_block["value"], user_block["value"], consts, batch, batch["labels"], batch["weights"])
    count = params["adam"]["count"] + 1
    lr, decay = consts["learning_rate"], consts["weight_decay"]
    new_dense, new_m, new_v = {}, {}, {}
    for name, value in params["dense"].items():
        # biases are not decayed
        new_dense[name], new_m[name], new_v[name] = _adam(
            value, g_dense[name], params["adam"]["m"][name], params["adam"]["v"][name],
            _per_probe(count, value), _per_probe(lr, value),
            0.0 if name.startswith("b") else _per_probe(decay, value))

    def rows_update(block, grad):
        at = functools.partial(_per_probe, shape_like=grad, axis=1)
        table_lr = at(consts["table_learning_rate"])
        if "accumulator" in block:
            value, accumulator = _rowwise_adagrad(block["value"], grad, block["accumulator"], table_lr, at(decay))
            return {"value": value, "accumulator": accumulator}
        value, m, v = _adam(block["value"], grad, block["m"], block["v"], at(count), table_lr, at(decay))
        return {"value": value, "m": m, "v": v}

    new_params = {"dense": new_dense, "adam": {"m": new_m, "v": new_v, "count": count}, "consts": consts}
    return new_params, rows_update(item_block, g_item), rows_update(user_block, g_user), losses


def predict(states: dict, inputs: dict):
    """[c, B, T] logits of c stacked probes; `inputs` as `forward`'s, but local_item [B],
    local_user [B] and local_history [B, L] hold global ids.

    Reads only the batch's rows of the tables, as training does (a view of the whole tables with
    the probe axis second would copy every table: at 10^6 items, 64 MB a probe).
    """
    batch, length = inputs["local_history"].shape
    items = jnp.concatenate([inputs["local_item"], inputs["local_history"].reshape(-1)])

    def rows(table, ids):  # value [c, rows, d] -> [Q, c, d]
        return jnp.swapaxes(table["value"].at[:, ids].get(mode="promise_in_bounds"), 0, 1)

    local = {**inputs, "local_item": jnp.arange(batch), "local_user": jnp.arange(batch),
             "local_history": batch + jnp.arange(batch * length).reshape(batch, length)}
    return forward(states["dense"], states["consts"], rows(states["tables"]["item"], items),
                   rows(states["tables"]["user"], inputs["local_user"]), local)


def train_flops_per_example(config: ProbeConfig, sizes: ProbeSizes) -> int:
    """Matmul FLOPs of one training example in one probe: each MLP layer forward and two backward
    (input and weight gradients), the feature projection forward and its weight gradient only
    (the feature itself is data)."""
    mlp_macs = sum(fan_in * fan_out for fan_in, fan_out in _mlp_layers(config, sizes))
    return 2 * (3 * mlp_macs + 2 * sizes.feature_width * config.dim)
