"""One probe ranker, as pure functions over a small state pytree (the bank maps exactly these).

A probe is a small real ranker: item-id and user-id embeddings, the mean embedding of the user's
last L engaged items (a pooled recent history), an optional feature projected to the embedding
width, and an MLP over [item, user, history, feature, item-side * user-side] to one logit per task.
A per-item feature joins the item side, a per-interaction feature the user side, so the product
term can compare a leaked item representation with the user's taste (or a leaked next item with
the candidate) the way a factorization model does.

Embedding tables are updated sparsely: a step gathers the rows its batch touches (once, by the
shared batch stream's unique ids), takes gradients with respect to those rows only and writes them
back with a lazy Adam (moments of untouched rows are left alone). Each table row stores
[value, adam_m, adam_v] side by side, so a step moves one gather and one scatter per table, not
three. Dense Adam over the whole table is the slow path this avoids.

The bank (`bank.py`) stacks probe states on a leading axis and runs `update` per probe with
`lax.map` (CPU) or `jax.vmap` (GPU); a probe trained alone runs the same `update` on an axis of 1.

Shapes (per probe): d embedding width, Dm padded feature width, L history length, T tasks,
Qi / Qu unique items / users of a batch (padded), B batch, F distinct features of the run (+1: slot 0
is the baseline's all-zero feature).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

_B1, _B2, _EPS = 0.9, 0.999, 1e-8


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Size and training of each probe. Every probe of a run shares it.

    model: "mlp" (the probe described above) or "genrank" (GenRank tiny; see `check_model`).
    dim: embedding width d. hidden: MLP widths. history: L, recent engaged items pooled.
    epochs, batch_size, learning_rate: Adam over the training rows (one shared shuffled stream;
    `data_seed` fixes its order). init_scale: std of the embedding tables at init.
    eval_batch_size: rows scored per evaluation chunk.
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

    def __post_init__(self):
        if self.model not in ("mlp", "genrank"):
            raise ValueError(f"model must be 'mlp' or 'genrank', got {self.model!r}")
        for name in ("dim", "epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.history < 0 or any(width < 1 for width in self.hidden):
            raise ValueError(f"need history >= 0 and hidden widths >= 1, got {self.history}, {self.hidden}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")

    def check_model(self) -> None:
        """Raise NotImplementedError for a model this version cannot probe with."""
        if self.model == "genrank":
            raise NotImplementedError(
                "ProbeConfig(model='genrank') is not implemented yet: the GenRank probe needs the "
                "model to take an extra per-item / per-exposure feature and a bank over its params; "
                "use model='mlp'")


@dataclasses.dataclass(frozen=True)
class ProbeSizes:
    """Static sizes of a run: vocabularies, tasks, padded feature width."""

    num_items: int
    num_users: int
    num_tasks: int
    feature_width: int  # Dm, >= 1


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
    keys = jax.random.split(seed_key, 2 + len(config.hidden) + 1)

    def table(key, rows):
        # [rows + 1, 3, d]: value, adam m, adam v; the extra last row is the padding id
        value = config.init_scale * jax.random.normal(key, (rows + 1, d), jnp.float32)
        return jnp.stack([value, jnp.zeros_like(value), jnp.zeros_like(value)], axis=1)

    widths = (5 * d, *config.hidden, sizes.num_tasks)
    dense = {}
    for layer, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        dense[f"w{layer}"] = jax.random.normal(keys[2 + layer], (fan_in, fan_out), jnp.float32) / np.sqrt(fan_in)
        dense[f"b{layer}"] = jnp.zeros((fan_out,), jnp.float32)
    mask = (jnp.arange(dm) < feature_width).astype(jnp.float32)
    fan_in = jnp.maximum(feature_width, 1).astype(jnp.float32)
    dense["proj"] = jax.random.normal(feature_key, (dm, d), jnp.float32) * mask[:, None] / jnp.sqrt(fan_in)
    return {
        "tables": {"item": table(keys[0], sizes.num_items), "user": table(keys[1], sizes.num_users)},
        "dense": dense,
        "adam": {"m": jax.tree.map(jnp.zeros_like, dense), "v": jax.tree.map(jnp.zeros_like, dense),
                 "count": jnp.zeros((), jnp.int32)},
        "consts": {"feature_slot": jnp.asarray(feature_slot, jnp.int32), "feature_mask": mask,
                   "item_side": jnp.asarray(item_side, jnp.float32),
                   "learning_rate": jnp.asarray(learning_rate, jnp.float32),
                   "weight_decay": jnp.asarray(weight_decay, jnp.float32)},
    }


def forward(dense: dict, consts: dict, item_rows, user_rows, inputs: dict):
    """[B, T] logits of one probe.

    item_rows [Qi, d], user_rows [Qu, d]: embedding rows; inputs (shared by all probes of a bank):
    local_item [B], local_user [B], local_history [B, L] (indices into those rows), history_mask
    [B, L] float, features [F, B, Dm].
    """
    e_item = item_rows[inputs["local_item"]]
    e_user = user_rows[inputs["local_user"]]
    mask = inputs["history_mask"]
    if mask.shape[-1]:
        pooled = jnp.einsum("bld,bl->bd", item_rows[inputs["local_history"]], mask)
        history = pooled / jnp.maximum(mask.sum(-1, keepdims=True), 1.0)
    else:
        history = jnp.zeros_like(e_item)
    raw = inputs["features"][consts["feature_slot"]] * consts["feature_mask"]  # [B, Dm]
    feature = raw @ dense["proj"]
    side = consts["item_side"]
    item_side = e_item + side * feature
    user_side = e_user + history + (1.0 - side) * feature
    x = jnp.concatenate([e_item, e_user, history, feature, item_side * user_side], axis=-1)
    layers = (len(dense) - 1) // 2
    for layer in range(layers):
        x = x @ dense[f"w{layer}"] + dense[f"b{layer}"]
        if layer < layers - 1:
            x = jax.nn.relu(x)
    return x


def loss_fn(dense, item_rows, user_rows, consts, inputs, labels, weights):
    """Sum over tasks of the weighted mean binary cross-entropy; labels [B, T], weights [B]."""
    logits = forward(dense, consts, item_rows, user_rows, inputs)
    per_example = jnp.sum(jnp.logaddexp(0.0, logits) - labels * logits, axis=-1)
    return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _adam(value, grad, m, v, count, learning_rate, weight_decay):
    """AdamW: decoupled weight decay, applied only where a step touches (lazy for table rows)."""
    m = _B1 * m + (1 - _B1) * grad
    v = _B2 * v + (1 - _B2) * grad * grad
    m_hat = m / (1 - _B1 ** count)
    v_hat = v / (1 - _B2 ** count)
    return value - learning_rate * (m_hat / (jnp.sqrt(v_hat) + _EPS) + weight_decay * value), m, v


def update(params: dict, item_block, user_block, batch: dict):
    """One Adam step of one probe on its gathered embedding rows.

    params: the probe's state without its tables ("dense", "adam", "consts");
    item_block [Qi, 3, d], user_block [Qu, 3, d]: rows of the batch's unique ids as
    [value, adam m, adam v]; batch: the `forward` inputs, labels [B, T], weights [B].
    Returns (new params, new item_block, new user_block, loss). Only these rows move: a lazy
    Adam, whose untouched rows keep their moments (the bank writes the blocks back).
    """
    consts = params["consts"]
    loss, (g_dense, g_item, g_user) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(
        params["dense"], item_block[:, 0], user_block[:, 0], consts, batch, batch["labels"], batch["weights"])
    count = params["adam"]["count"] + 1
    lr, decay = consts["learning_rate"], consts["weight_decay"]
    new_dense, new_m, new_v = {}, {}, {}
    for name, value in params["dense"].items():
        # biases are not decayed
        new_dense[name], new_m[name], new_v[name] = _adam(
            value, g_dense[name], params["adam"]["m"][name], params["adam"]["v"][name], count, lr,
            0.0 if name.startswith("b") else decay)

    def rows_update(block, grad):
        return jnp.stack(_adam(block[:, 0], grad, block[:, 1], block[:, 2], count, lr, decay), axis=1)

    new_params = {"dense": new_dense, "adam": {"m": new_m, "v": new_v, "count": count}, "consts": consts}
    return new_params, rows_update(item_block, g_item), rows_update(user_block, g_user), loss


def predict(state: dict, inputs: dict):
    """[B, T] logits of one probe with global ids as the local indices (its whole tables)."""
    return forward(state["dense"], state["consts"], state["tables"]["item"][:, 0],
                   state["tables"]["user"][:, 0], inputs)


def train_flops_per_example(config: ProbeConfig, sizes: ProbeSizes) -> int:
    """Matmul FLOPs of one training example in one probe: forward x3 (forward + two backward)."""
    widths = (5 * config.dim, *config.hidden, sizes.num_tasks)
    forward_macs = sizes.feature_width * config.dim + sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return 3 * 2 * forward_macs
