"""The probe bank: many probes (baseline and features x seeds) trained by one compiled program.

Probe states are stacked along a leading probe axis [K, ...]; one epoch is one `jax.jit` of a
`lax.scan` over steps whose body gathers the batch once (labels, history mask, every feature's
rows), then runs `probe.update` on stacks of probes (an explicit probe axis: batched matmuls, one
gather per shared index for all probes of a stack). The loop mode (`parallel=False`) runs the very
same code on a stack of one probe at a time.

Why this shape: a loop over probes already keeps both CPU cores busy (one probe's matmuls run near
the matmul peak), so on a CPU the bank wins only by doing less per probe: the batch is gathered
once, not K times; embedding rows are touched sparsely (the unique ids of a step are computed once
on the host, shared by all probes); only the eval window is scored; one program, not K. On a GPU
all K probes run as one stack: batched matmuls and one launch per op instead of K.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from genrank_jax.leakage import probe as probe_lib
from genrank_jax.leakage.log import InteractionLog
from genrank_jax.leakage.sequences import recent_engaged


@dataclasses.dataclass(frozen=True)
class Feature:
    """A feature for the probes: values [num_items, w] (per="item") or [N, w] (per="interaction")."""

    values: np.ndarray
    per: str

    def __post_init__(self):
        values = np.asarray(self.values, np.float32)
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2:
            raise ValueError(f"a feature must be [rows, width], got shape {np.shape(self.values)}")
        if self.per not in ("item", "interaction"):
            raise ValueError(f"per must be 'item' or 'interaction', got {self.per!r}")
        if not np.isfinite(values).all():
            raise ValueError("feature values must be finite")
        object.__setattr__(self, "values", values)

    @property
    def width(self) -> int:
        return int(self.values.shape[1])


def standardized(values: np.ndarray) -> np.ndarray:
    """Columns to mean 0 and std 1 (constant columns to 0), rows scaled by 1/sqrt(width).

    Probes compare features of any origin and scale (codebooks, embeddings, multi-hot genres):
    after this every feature enters with rows of norm about 1, the embeddings' scale does not
    decide how fast a probe can use it, and the comparison is about information, not units.
    """
    values = np.asarray(values, np.float64)
    std = values.std(axis=0)
    centered = values - values.mean(axis=0)
    scaled = np.divide(centered, std, out=np.zeros_like(centered), where=std > 0)
    return (scaled / np.sqrt(values.shape[1])).astype(np.float32)


def as_feature(name: str, values, log: InteractionLog) -> Feature:
    """A `Feature` from an array, its side told by its row count (a `Feature` passes through)."""
    if isinstance(values, Feature):
        feature = values
    else:
        rows = np.shape(values)[0] if np.ndim(values) else -1
        if rows == log.num_items == log.num_rows:
            raise ValueError(f"feature {name!r}: {rows} rows fit both items and interactions; "
                             "wrap it as Feature(values, per='item' or 'interaction')")
        if rows == log.num_items:
            feature = Feature(values, "item")
        elif rows == log.num_rows:
            feature = Feature(values, "interaction")
        else:
            raise ValueError(f"feature {name!r} has {rows} rows; need num_items={log.num_items} (per item) "
                             f"or N={log.num_rows} (per interaction)")
    expected = log.num_items if feature.per == "item" else log.num_rows
    if feature.values.shape[0] != expected:
        raise ValueError(f"feature {name!r} is per {feature.per} but has {feature.values.shape[0]} rows, not {expected}")
    return feature


@dataclasses.dataclass(frozen=True)
class ProbeRun:
    """Everything the probes of one run share: log arrays on device, rows, features, sizes.

    Feature slot 0 is "no feature" (the baseline); slots 1.. follow `feature_names`.
    """

    config: probe_lib.ProbeConfig
    sizes: probe_lib.ProbeSizes
    device_data: dict
    host_item: np.ndarray
    host_user: np.ndarray
    host_history: np.ndarray
    train_rows: np.ndarray
    eval_rows: np.ndarray
    eval_labels: np.ndarray  # [Ne, T]
    feature_names: tuple[str, ...]
    feature_widths: tuple[int, ...]  # per slot, slot 0 = 0
    feature_item_side: tuple[float, ...]
    log: InteractionLog | None = None  # the sequence (GenRank) probe tokenizes it

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train_rows) // self.config.batch_size)


def prepare_run(log: InteractionLog, train_rows, eval_rows, features: dict[str, Feature],
                config: probe_lib.ProbeConfig) -> ProbeRun:
    """Precompute histories, stack features by side (padded to one width) and move them to device."""
    train_rows = np.asarray(train_rows, np.int64)
    eval_rows = np.asarray(eval_rows, np.int64)
    if len(train_rows) == 0:
        raise ValueError("no training rows before the cutoff")
    num_items, num_users = log.num_items, log.num_users
    history = recent_engaged(log.user, log.item, log.timestamp, log.engaged(), config.history, pad=num_items)
    names = tuple(features)
    width = max([1] + [f.width for f in features.values()])
    item_names = [n for n in names if features[n].per == "item"]
    row_names = [n for n in names if features[n].per == "interaction"]
    item_stack = np.zeros((len(item_names), num_items + 1, width), np.float32)  # last row: padding id
    for i, name in enumerate(item_names):
        item_stack[i, :num_items, :features[name].width] = standardized(features[name].values)
    row_stack = np.zeros((len(row_names), log.num_rows, width), np.float32)
    for i, name in enumerate(row_names):
        row_stack[i, :, :features[name].width] = standardized(features[name].values)
    slot_names = tuple(item_names + row_names)
    device_data = {
        "item": jnp.asarray(log.item, jnp.int32), "user": jnp.asarray(log.user, jnp.int32),
        "history": jnp.asarray(history), "labels": jnp.asarray(log.labels, jnp.float32),
        "item_features": jnp.asarray(item_stack), "row_features": jnp.asarray(row_stack),
    }
    sizes = probe_lib.ProbeSizes(num_items, num_users, log.num_tasks, width)
    return ProbeRun(config, sizes, device_data, log.item, log.user, history, train_rows, eval_rows,
                    log.labels[eval_rows], slot_names, (0,) + tuple(features[n].width for n in slot_names),
                    (0.0,) + tuple(1.0 if features[n].per == "item" else 0.0 for n in slot_names), log)


@functools.lru_cache(maxsize=16)
def _init_fn(config: probe_lib.ProbeConfig, sizes: probe_lib.ProbeSizes):
    """The jitted, vmapped `init_probe` of one (config, sizes), compiled once, not per call."""
    return jax.jit(jax.vmap(functools.partial(probe_lib.init_probe, config=config, sizes=sizes)))


def init_bank(run: ProbeRun, seeds, slots) -> dict:
    """Stacked states [K, ...] of probes (seeds[k], slots[k]); see `probe.init_probe` for the keys."""
    seeds = np.asarray(seeds, np.int64)
    slots = np.asarray(slots, np.int64)
    seed_keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
    feature_keys = jax.vmap(jax.random.fold_in)(seed_keys, jnp.asarray(slots + 1, jnp.uint32))
    widths = jnp.asarray(np.asarray(run.feature_widths)[slots], jnp.int32)
    sides = jnp.asarray(np.asarray(run.feature_item_side)[slots], jnp.float32)
    # per-probe hyperparameters live in the state, so a bank could mix them; a run uses one config
    rates = jnp.full(len(slots), run.config.learning_rate, jnp.float32)
    decays = jnp.full(len(slots), run.config.weight_decay, jnp.float32)
    return _init_fn(run.config, run.sizes)(seed_keys, feature_keys, jnp.asarray(slots, jnp.int32), widths, sides,
                                   rates, decays)


def epoch_batches(run: ProbeRun, epoch: int) -> dict:
    """[S, ...] index arrays of one epoch: rows, weights, unique ids and local indices (host numpy).

    The shuffle depends on (data_seed, epoch) only, so every probe sees the same stream.
    """
    config, sizes = run.config, run.sizes
    batch, length = config.batch_size, config.history
    rng = np.random.default_rng([config.data_seed, epoch])
    order = rng.permutation(run.train_rows)
    steps = run.steps_per_epoch
    weights = np.zeros(steps * batch, np.float32)
    weights[:len(order)] = 1.0
    rows = np.concatenate([order, np.full(steps * batch - len(order), order[0])]).reshape(steps, batch)
    weights = weights.reshape(steps, batch)
    # fixed unique-set sizes so every epoch reuses one compiled program
    item_slots = min(sizes.num_items + 1, batch * (length + 1) + 1)
    user_slots = min(sizes.num_users + 1, batch + 1)
    out = {name: [] for name in ("unique_items", "unique_users", "local_item", "local_user", "local_history")}
    for step_rows in rows:
        ids = np.concatenate([run.host_item[step_rows], run.host_history[step_rows].ravel(), [sizes.num_items]])
        unique, inverse = np.unique(ids, return_inverse=True)
        out["unique_items"].append(np.pad(unique, (0, item_slots - len(unique)), constant_values=sizes.num_items))
        out["local_item"].append(inverse[:batch])
        out["local_history"].append(inverse[batch:-1].reshape(batch, length))
        users, user_inverse = np.unique(np.append(run.host_user[step_rows], sizes.num_users), return_inverse=True)
        out["unique_users"].append(np.pad(users, (0, user_slots - len(users)), constant_values=sizes.num_users))
        out["local_user"].append(user_inverse[:batch])
    arrays = {name: np.stack(values).astype(np.int32) for name, values in out.items()}
    arrays["rows"] = rows.astype(np.int32)
    arrays["weights"] = weights
    return arrays


def _shared_batch(data: dict, batch: dict, num_items: int) -> dict:
    """Gather what every probe reads from the log once: labels, history mask, feature rows."""
    rows = batch["rows"]
    features = [jnp.zeros((1, rows.shape[0], data["item_features"].shape[-1]), jnp.float32),
                data["item_features"][:, data["item"][rows]], data["row_features"][:, rows]]
    return {**batch, "labels": data["labels"][rows],
            "history_mask": (data["history"][rows] != num_items).astype(jnp.float32),
            "features": jnp.concatenate(features, axis=0)}


CPU_CHUNK = 1  # probes per stack on a CPU (see `resolve_strategy`)


def resolve_strategy(strategy: str) -> str:
    """How the probe axis is run: "vmap" (all K probes as one batched stack), "map" (`lax.map`
    over stacks of `CPU_CHUNK` probes) or "auto": "map" on CPU, "vmap" elsewhere.

    Both run the same `probe.update` on an explicit probe axis (the form `jax.vmap` would give,
    but with the batch's gathers shared by all probes). On a GPU one stack of all probes fills the
    device. On this 2-core CPU one probe's matmuls already run near the matmul peak, and stacks
    were slower per probe (c = 8: 18.6 ms a step vs 8 x 1.7 ms alone; c = 64 falls out of cache),
    so the CPU runs stacks of one inside the compiled program.
    """
    if strategy == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    if strategy not in ("vmap", "map"):
        raise ValueError(f"strategy must be 'auto', 'vmap' or 'map', got {strategy!r}")
    return strategy


def chunk_size(num_probes: int, strategy: str) -> int:
    """Probes per stack: all of them ("vmap"), else the largest divisor of K up to CPU_CHUNK."""
    if strategy == "vmap":
        return num_probes
    return max(c for c in range(1, min(CPU_CHUNK, num_probes) + 1) if num_probes % c == 0)


def _grouped(tree, chunk: int):
    """[K, ...] leaves as [K / chunk, chunk, ...]."""
    return jax.tree.map(lambda x: x.reshape(-1, chunk, *x.shape[1:]), tree)


def _ungrouped(tree):
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)


def stack_step(states: dict, batch: dict):
    """One step of c stacked probes [c, ...] on a shared batch: gather the rows of the batch's
    unique ids from every probe's tables, `probe.update`, write them back. Returns (states, [c]).

    The gathered rows are laid out [Q, c, 3, d] so the batch's per-example lookups (B items,
    B * L history items) read c probes' rows per index; a stack of c = 1 is a probe alone.
    """
    tables = states["tables"]
    item_ids, user_ids = batch["unique_items"], batch["unique_users"]
    params = {name: states[name] for name in ("dense", "adam", "consts")}

    def gather(table, ids):  # [c, rows, 3, d] -> [Q, c, 3, d]
        return jnp.swapaxes(jnp.take(table, ids, axis=1), 0, 1)

    params, item_block, user_block, losses = probe_lib.update(
        params, gather(tables["item"], item_ids), gather(tables["user"], user_ids), batch)
    # padding ids repeat in the unique lists; their rows get identical values, so the order of
    # the duplicate writes does not matter
    new_tables = {"item": tables["item"].at[:, item_ids].set(jnp.swapaxes(item_block, 0, 1)),
                  "user": tables["user"].at[:, user_ids].set(jnp.swapaxes(user_block, 0, 1))}
    return {"tables": new_tables, **params}, losses


@functools.partial(jax.jit, static_argnames=("num_items", "chunk"), donate_argnums=0)
def _train_epoch(states, data, batches, *, num_items: int, chunk: int):
    """States [K, ...] after one epoch of `batches` [S, ...]: a scan over steps whose body
    gathers the shared batch once and maps `stack_step` over the stacks of probes.

    (Blocking the steps so that each stack ran a block of steps with its state in cache, shared
    batches gathered ahead, measured the same on this CPU at K = 32 and 64; the simple order stays.)
    """
    def body(groups, batch):
        shared = _shared_batch(data, batch, num_items)
        return jax.lax.map(lambda group: stack_step(group, shared)[0], groups), None

    return _ungrouped(jax.lax.scan(body, _grouped(states, chunk), batches)[0])


@functools.partial(jax.jit, static_argnames=("num_items", "chunk"))
def _predict_chunks(states, data, rows, *, num_items: int, chunk: int):
    groups = _grouped(states, chunk)

    def body(_, chunk_rows):
        shared = _shared_batch(data, {"rows": chunk_rows}, num_items)
        inputs = {**shared, "local_item": data["item"][chunk_rows], "local_user": data["user"][chunk_rows],
                  "local_history": data["history"][chunk_rows]}
        logits = jax.lax.map(lambda group: probe_lib.predict(group, inputs), groups)  # [G, c, B, T]
        return None, logits.reshape(-1, *logits.shape[2:])

    return jax.lax.scan(body, None, rows)[1]


def _eval_chunks(run: ProbeRun) -> np.ndarray:
    size = run.config.eval_batch_size
    rows = run.eval_rows if len(run.eval_rows) else np.zeros(1, np.int64)
    chunks = -(-len(rows) // size)
    return np.concatenate([rows, np.full(chunks * size - len(rows), rows[0])]).reshape(chunks, size).astype(np.int32)


def train(run: ProbeRun, states: dict, *, strategy: str = "auto", batches=None, on_epoch=None) -> dict:
    """Train stacked states [K, ...] (K >= 1) through all epochs, one compiled program per epoch.

    batches: optional list of precomputed `epoch_batches` (a loop over probes reuses them).
    """
    strategy = resolve_strategy(strategy)
    for epoch in range(run.config.epochs):
        epoch_data = batches[epoch] if batches is not None else epoch_batches(run, epoch)
        states = _train_epoch(states, run.device_data, epoch_data, num_items=run.sizes.num_items,
                              chunk=chunk_size(num_probes(states), strategy))
        if on_epoch is not None:
            jax.block_until_ready(states)  # so a callback's clock and progress are real
            on_epoch(epoch)
    return states


def predict_eval(run: ProbeRun, states: dict, *, strategy: str = "auto") -> np.ndarray:
    """[K, Ne, T] logits of stacked states on the eval rows."""
    chunks = _eval_chunks(run)
    chunk = chunk_size(num_probes(states), resolve_strategy(strategy))
    logits = np.asarray(_predict_chunks(states, run.device_data, chunks, num_items=run.sizes.num_items,
                                        chunk=chunk))
    logits = np.moveaxis(logits, 0, 1)  # scan stacks chunks first: [C, K, chunk, T]
    return logits.reshape(logits.shape[0], -1, run.sizes.num_tasks)[:, :len(run.eval_rows)]


def num_probes(states: dict) -> int:
    return int(states["adam"]["count"].shape[0])


def select(states: dict, index: int) -> dict:
    """Probe `index` of stacked states, keeping a probe axis of size 1."""
    return jax.tree.map(lambda x: x[index:index + 1], states)


def train_and_predict(run: ProbeRun, seeds, slots, *, parallel: bool = True, strategy: str = "auto",
                      on_epoch=None) -> np.ndarray:
    """[K, Ne, T] eval logits of probes (seeds[k], slots[k]), trained as one bank or one at a time.

    Both modes start from the same initial states and run the same `bank_step` / `probe.update`;
    the loop gives it a probe axis of size 1 and reuses one set of batches for every probe.
    `ProbeConfig(model="genrank")` probes are trained by `genrank_probe.train_and_predict`.
    """
    if run.config.model == "genrank":
        from genrank_jax.leakage import genrank_probe
        return genrank_probe.train_and_predict(run, seeds, slots, parallel=parallel, on_epoch=on_epoch)
    states = init_bank(run, seeds, slots)
    if parallel:
        return predict_eval(run, train(run, states, strategy=strategy, on_epoch=on_epoch), strategy=strategy)
    batches = [epoch_batches(run, epoch) for epoch in range(run.config.epochs)]
    outputs = []
    for k in range(len(slots)):
        state = train(run, select(states, k), strategy=strategy, batches=batches, on_epoch=on_epoch)
        outputs.append(predict_eval(run, state, strategy=strategy)[0])
    return np.stack(outputs)
