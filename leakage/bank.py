"""The probe bank: many probes (baseline and features x seeds) trained by the same compiled programs.

Probe states are stacked along a leading probe axis [K, ...] and run as stacks of c probes with an
explicit probe axis (batched matmuls, one gather per shared index for all probes of a stack). An
epoch runs in blocks of steps: a block gathers what every probe reads from the log once (labels,
history mask, every feature's rows) on the device that holds the log, then each stack runs the
block's steps with its state carried in cache (one compiled program for every block). The loop
mode (`parallel=False`) runs the very same code on a stack of one probe at a time. States that do
not fit `STATE_BYTES` train in groups; a large catalog's tables learn with row-wise Adagrad
(`probe.ProbeConfig.table_optimizer`).

Where the speed comes from on a CPU (2 cores, ml-100k, 1024-row batches): a stack of probes'
[c, 1024, 80] x [c, 80, 128] matmuls run nearer the matmul peak than one probe's; the batch is
gathered once, not K times; embedding rows are touched sparsely (the unique ids of a step are
computed once on the host, shared by all probes); only the eval window is scored; one program,
not K; and with one JAX CPU device per core (`devices.use_every_cpu_core`) each core runs its
own slice of the probes, so one stack's serial ops (scatters, small reductions) no longer leave
the other core idle. On a GPU all of a device's probes run as one stack: one launch per op
instead of K. Several devices (GPUs, TPU cores, CPU devices) each take a slice of the probe axis
(`devices.py`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from genrank_jax.leakage import devices as devices_lib
from genrank_jax.leakage import probe as probe_lib
from genrank_jax.leakage.log import InteractionLog
from genrank_jax.leakage.sequences import recent_engaged


@dataclasses.dataclass(frozen=True)
class Feature:
    """A feature for the probes: values [num_items, w] (per="item") or [N, w] (per="interaction")."""

    values: np.ndarray
    per: str

    def __post_init__(self):
        raw = np.asarray(self.values)
        if raw.dtype.kind not in "biuf":
            raise ValueError(f"feature values must be numbers, got dtype {raw.dtype}")
        if raw.dtype.kind == "f" and np.isfinite(raw).all() and np.abs(raw).max(initial=0) > np.finfo(np.float32).max:
            raise ValueError(f"feature values reach {np.abs(raw).max():.3g}, outside float32's range "
                             f"(|x| <= {np.finfo(np.float32).max:.3g}): rescale them")
        values = raw.astype(np.float32)
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


def standardized(values: np.ndarray, *, out: np.ndarray | None = None, rows_per_chunk: int = 1 << 20) -> np.ndarray:
    """Columns to mean 0 and std 1 (constant columns to 0), rows scaled by 1/sqrt(width).

    Probes compare features of any origin and scale (codebooks, embeddings, multi-hot genres):
    after this every feature enters with rows of norm about 1, the embeddings' scale does not
    decide how fast a probe can use it, and the comparison is about information, not units.
    Statistics are accumulated in float64 over chunks of rows and the result is written chunk by
    chunk into `out` (default: a new float32 array; any float dtype, e.g. the bank's bfloat16), so a
    per-interaction feature of a 5M-row log ([5M, 32], 640 MB) needs no full-size temporary.
    """
    values = np.asarray(values)
    rows, width = values.shape
    chunks = [slice(start, start + rows_per_chunk) for start in range(0, rows, rows_per_chunk)]
    mean = sum((values[c].sum(axis=0, dtype=np.float64) for c in chunks), np.zeros(width)) / max(rows, 1)
    square = sum((np.square(values[c] - mean).sum(axis=0) for c in chunks), np.zeros(width))
    std = np.sqrt(square / max(rows, 1))
    scale = np.divide(1.0, std * np.sqrt(width), out=np.zeros(width), where=std > 0)
    out = np.empty((rows, width), np.float32) if out is None else out
    for c in chunks:
        out[c] = ((values[c] - mean) * scale).astype(np.float32)
    return out


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
        raise ValueError(f"feature {name!r} is per {feature.per} but has {feature.values.shape[0]} rows, "
                         f"not {expected}")
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

    def on_device(name, rows):  # standardized, padded to the run's width, moved; one host copy at a time
        # bfloat16: a feature is an input, 3 significant digits carry what it holds, and a large log's
        # per-interaction features take half the memory (each device of the bank holds them all)
        padded = np.zeros((rows, width), jnp.bfloat16)  # per item: a last, zero row for the padding id
        standardized(features[name].values, out=padded[:features[name].values.shape[0], :features[name].width])
        return jax.device_put(padded.view(np.uint16))  # bit patterns: see `feature_rows`; one copy

    slot_names = tuple(item_names + row_names)
    device_data = {
        "item": jax.device_put(log.item.astype(np.int32)), "user": jax.device_put(log.user.astype(np.int32)),
        "history": jax.device_put(history), "labels": jax.device_put(log.labels.astype(np.float32)),
        # one array per feature, not a stack: a stack of a large log's per-interaction features
        # would need its host copy and its device copy at once
        "item_features": tuple(on_device(name, num_items + 1) for name in item_names),
        "row_features": tuple(on_device(name, log.num_rows) for name in row_names),
    }
    sizes = probe_lib.ProbeSizes(num_items, num_users, log.num_tasks, width)
    config = probe_lib.resolved_table_optimizer(config, sizes)  # "auto" decided by the catalog's size
    return ProbeRun(config, sizes, device_data, log.item, log.user, history, train_rows, eval_rows,
                    log.labels[eval_rows], slot_names, (0,) + tuple(features[n].width for n in slot_names),
                    (0.0,) + tuple(1.0 if features[n].per == "item" else 0.0 for n in slot_names), log)


def _init_stack(inputs, *, config: probe_lib.ProbeConfig, sizes: probe_lib.ProbeSizes) -> dict:
    """States [K, ...] of probes given per-probe (seed, slot, width, side, rate, decay), each [K].

    A `lax.map`, not a vmap: each probe's random draws (bits, normals, scaled copies: ~3x its
    tables) are temporaries of its own iteration, written straight into the stacked states; vmapped,
    all K probes' draws were alive at once (at 10^6 items, 12 probes took 4.5 GB to make 1 GB).
    """
    def one(probe):
        seed, slot, width, side, rate, decay = probe
        seed_key = jax.random.key(seed)
        return probe_lib.init_probe(seed_key, jax.random.fold_in(seed_key, slot + 1), slot, width, side, rate, decay,
                                    config=config, sizes=sizes)

    return jax.lax.map(one, inputs)


def init_bank(run: ProbeRun, seeds, slots, *, strategy: str | None = None) -> dict:
    """Stacked states [K, ...] of probes (seeds[k], slots[k]); see `probe.init_probe` for the keys.

    strategy: None, the states on the default device; else made where the bank trains them: padded
    to the layout's slots with copies of probe 0 (`devices.Layout.padded`, results dropped) and
    each device drawing its own slice (no whole copy on one device first: at 10^6 items a group's
    states are 1 GB).
    """
    seeds = np.asarray(seeds, np.int64)
    slots = np.asarray(slots, np.int64)
    lay = None
    if strategy is not None:
        lay = _layout(run, len(slots), strategy)
        extra = lay.padded - len(slots)
        seeds, slots = (np.concatenate([x, np.full(extra, x[0])]) for x in (seeds, slots))
    # per-probe hyperparameters live in the state, so a bank could mix them; a run uses one config
    inputs = (np.asarray(seeds, np.uint32), np.asarray(slots, np.int32),
              np.asarray(run.feature_widths, np.int32)[slots], np.asarray(run.feature_item_side, np.float32)[slots],
              np.full(len(slots), run.config.learning_rate, np.float32),
              np.full(len(slots), run.config.weight_decay, np.float32))
    static = (("config", run.config), ("sizes", run.sizes))
    if lay is None or not lay.spread:
        return devices_lib.spread(_init_stack, (), static, replicated=0)(inputs)
    return devices_lib.spread(_init_stack, lay.devices, static, replicated=0)(devices_lib.place(inputs, lay))


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
    items = data["item"][rows]
    width = _feature_width(data)
    features = [jnp.zeros((rows.shape[0], width), jnp.float32)]
    features += [feature_rows(table, items) for table in data["item_features"]]
    features += [feature_rows(table, rows) for table in data["row_features"]]
    return {**batch, "labels": data["labels"][rows],
            "history_mask": (data["history"][rows] != num_items).astype(jnp.float32),
            "features": jnp.stack(features)}


def feature_rows(table: jax.Array, index: jax.Array) -> jax.Array:
    """float32 rows of a feature table stored as bfloat16 bit patterns (uint16, see `prepare_run`).

    The bits are gathered as integers and widened by a shift: XLA's CPU backend computes a bfloat16
    gather in float32, converting the whole table first, and hoists that conversion out of the
    epoch's loop: float32 copies of every feature on every device (2.7 GB a device for a 5M-row
    log's, seen in the compiled program's `memory_analysis()`).
    """
    return widened(table[index])


def widened(bits: jax.Array) -> jax.Array:
    """float32 values of bfloat16 bit patterns (uint16): bfloat16 is the top half of a float32."""
    return jax.lax.bitcast_convert_type(bits.astype(jnp.uint32) << 16, jnp.float32)


def _feature_width(data: dict) -> int:
    tables = (*data["item_features"], *data["row_features"])
    return tables[0].shape[-1] if tables else 1


SHARED_BLOCK_BYTES = 64 << 20  # shared batches gathered ahead per block of steps (see `block_steps`)
resolve_strategy = devices_lib.resolve_strategy  # the bank's public knobs, re-exported


def _row_floats(run: ProbeRun) -> int:
    """4-byte values gathered per example: every feature's row, labels, history ids and mask, ids."""
    features = 1 + len(run.device_data["item_features"]) + len(run.device_data["row_features"])
    return features * run.sizes.feature_width + run.sizes.num_tasks + 2 * run.config.history + 4


def block_steps(run: ProbeRun) -> int:
    """Steps per block of shared batches (`train`): about as many as fit SHARED_BLOCK_BYTES,
    evened out so the last block is nearly full (a shorter last block compiles once more)."""
    floats = run.config.batch_size * _row_floats(run)
    most = int(np.clip(SHARED_BLOCK_BYTES // (4 * floats), 1, run.steps_per_epoch))
    blocks = -(-run.steps_per_epoch // most)
    return -(-run.steps_per_epoch // blocks)


def _pad_leading(tree, extra: int):
    """Leaves [n, ...] as [n + extra, ...], the extra entries copies of entry 0."""
    if not extra:
        return tree
    return jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[:1], extra, axis=0)]), tree)


def _padded(states: dict, lay: devices_lib.Layout) -> dict:
    """States [K, ...] padded to the layout's slots with copies of probe 0 (results dropped),
    on the layout's devices."""
    return devices_lib.place(_pad_leading(states, lay.padded - num_probes(states)), lay)


def _grouped(tree, chunk: int):
    """[G * chunk, ...] leaves as [G, chunk, ...]."""
    return jax.tree.map(lambda x: x.reshape(-1, chunk, *x.shape[1:]), tree)


def _ungrouped(tree):
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)


def stack_step(states: dict, batch: dict):
    """One step of c stacked probes [c, ...] on a shared batch: gather the rows of the batch's
    unique ids from every probe's tables, `probe.update`, write them back. Returns (states, [c]).

    The gathered rows are laid out [Q, c, d] so the batch's per-example lookups (B items,
    B * L history items) read c probes' rows per index; a stack of c = 1 is a probe alone.
    (Rows kept [c, Q, d], with no transposes, measured 3 to 10% slower.)
    """
    tables = states["tables"]
    item_ids, user_ids = batch["unique_items"], batch["unique_users"]
    params = {name: states[name] for name in ("dense", "adam", "consts")}

    # ids are in range and sorted: `epoch_batches` pads np.unique's sorted ids with the padding id,
    # the largest (the tables' last row)
    def gather(table, ids):  # {value, m, v} or {value, accumulator} [c, rows, ...] -> [Q, c, ...]
        return {name: jnp.swapaxes(array.at[:, ids].get(mode="promise_in_bounds", indices_are_sorted=True), 0, 1)
                for name, array in table.items()}

    def scatter(table, ids, block):
        return {name: array.at[:, ids].set(jnp.swapaxes(block[name], 0, 1), mode="promise_in_bounds",
                                           indices_are_sorted=True)
                for name, array in table.items()}

    params, item_block, user_block, losses = probe_lib.update(
        params, gather(tables["item"], item_ids), gather(tables["user"], user_ids), batch)
    # padding ids repeat in the unique lists; their rows get identical values, so the order of
    # the duplicate writes does not matter
    new_tables = {"item": scatter(tables["item"], item_ids, item_block),
                  "user": scatter(tables["user"], user_ids, user_block)}
    return {"tables": new_tables, **params}, losses


def _train_block(states, shared, *, chunk: int):
    """States [G * chunk, ...] after the steps of one block of shared batches (leaves [steps, ...]).

    Every stack of probes runs all the block's steps in turn: a scan whose carry is that stack's
    state, so a small catalog's state stays in cache and is not copied in and out of the [K, ...]
    stack at every step. Probes are independent, so the order changes nothing but speed (at
    K = 32 on this CPU: 2.4 s an epoch against 3.2 s stepping every stack at every step).
    """
    def run_stack(index, groups):  # the stack is read out and written back in place
        stack = jax.tree.map(lambda x: x[index], groups)
        stack = jax.lax.scan(lambda state, batch: (stack_step(state, batch)[0], None), stack, shared)[0]
        return jax.tree.map(lambda x, new: x.at[index].set(new), groups, stack)

    groups = _grouped(states, chunk)
    # a fori_loop, not lax.map: map writes a second copy of every stack's state (at 10^6 items,
    # 82 MB a probe), the loop updates the one carried copy
    return _ungrouped(jax.lax.fori_loop(0, jax.tree.leaves(groups)[0].shape[0], run_stack, groups))


@functools.partial(jax.jit, static_argnames="num_items")
def _gather_steps(data, batches, *, num_items: int):
    """[steps, ...] shared batches of a block of steps' indices [steps, ...]: one gather per index
    for every probe (labels, history mask, every feature's rows)."""
    return jax.vmap(lambda batch: _shared_batch(data, batch, num_items))(batches)


@functools.partial(jax.jit, static_argnames="num_items")
def _gather_eval(data, rows, *, num_items: int):
    """The inputs of `probe.predict` for eval row chunks [C, rows]: leaves [C, rows, ...]."""
    def one(chunk_rows):
        shared = _shared_batch(data, {"rows": chunk_rows}, num_items)
        return {**shared, "local_item": data["item"][chunk_rows], "local_user": data["user"][chunk_rows],
                "local_history": data["history"][chunk_rows]}
    return jax.vmap(one)(rows)


def _predict_block(states, inputs, *, chunk: int):
    """[C, G * chunk, rows, T] logits of stacked states [G * chunk, ...] on a block of eval chunks."""
    groups = _grouped(states, chunk)

    def body(_, chunk_inputs):
        logits = jax.lax.map(lambda group: probe_lib.predict(group, chunk_inputs), groups)  # [G, c, B, T]
        return None, logits.reshape(-1, *logits.shape[2:])

    return jax.lax.scan(body, None, inputs)[1]


def _blocks(total: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]


def _over_blocks(run: ProbeRun, lay: devices_lib.Layout, gather, indices: dict, blocks: list[slice], step, carry):
    """`carry = step(carry, shared)` for each block, `shared` being `gather(data, indices[block])`
    computed on the device that holds the run's log, then replicated to the layout's devices.

    The log stays on that one device: replicated to every device of the bank, a 5M-row log's
    arrays and features took 1.6 GB a device; a block's gathered batches take about
    `SHARED_BLOCK_BYTES`. The next block is gathered while the devices work on this one, and no
    further: dispatch is asynchronous, and a loop that queued every block ahead held all their
    gathered batches at once (at 5M rows, +5 GB)."""
    def gathered(block):
        host = jax.tree.map(lambda x: x[block], indices)
        return devices_lib.place(gather(run.device_data, host, num_items=run.sizes.num_items), lay, probe_axis=None)

    ahead = gathered(blocks[0]) if blocks else None
    for index in range(len(blocks)):
        shared, ahead = ahead, None
        carry = step(carry, shared)
        del shared
        if index + 1 < len(blocks):
            ahead = gathered(blocks[index + 1])
        jax.block_until_ready(carry)  # this block done (and its batches freed) before queueing more
    return carry


ONE_STACK_ABOVE_BYTES = 32 << 20  # a probe's state beyond this: a device runs its probes as one stack


def _layout(run: ProbeRun, count: int, strategy: str) -> devices_lib.Layout:
    """`devices.layout` of `count` probes of this run: one stack a device when a probe's state is
    far beyond any cache (measured at 10^6 items, 12 probes on two CPU devices: one stack of 6 a
    device trained 11% faster than two of 3, whose states were copied out and back every block)."""
    return devices_lib.layout(count, resolve_strategy(strategy),
                              one_stack=state_bytes(run.config, run.sizes) > ONE_STACK_ABOVE_BYTES)


def _laid_out(run: ProbeRun, states: dict, strategy: str):
    """(layout, states padded to its slots on its devices)."""
    lay = _layout(run, num_probes(states), strategy)
    return lay, _padded(states, lay)


def _eval_chunks(run: ProbeRun) -> np.ndarray:
    size = run.config.eval_batch_size
    rows = run.eval_rows if len(run.eval_rows) else np.zeros(1, np.int64)
    chunks = -(-len(rows) // size)
    return np.concatenate([rows, np.full(chunks * size - len(rows), rows[0])]).reshape(chunks, size).astype(np.int32)


def train(run: ProbeRun, states: dict, *, strategy: str = "auto", batches=None, on_epoch=None) -> dict:
    """Train stacked states [K, ...] (K >= 1) through all epochs, a block of steps at a time
    (`block_steps`): the block's shared batches are gathered once, then every stack of probes runs
    its steps (one compiled program per block length, reused by every block, epoch and group).

    batches: optional list of precomputed `epoch_batches` (a loop over probes reuses them).
    """
    count = num_probes(states)
    lay, states = _laid_out(run, states, strategy)
    train_block = devices_lib.spread(_train_block, lay.devices, (("chunk", lay.chunk),), donate=True)

    def batches_of(epoch):
        return batches[epoch] if batches is not None else epoch_batches(run, epoch)

    for epoch in range(run.config.epochs):
        epoch_data = batches_of(epoch)
        blocks = _blocks(run.steps_per_epoch, block_steps(run))
        states = _over_blocks(run, lay, _gather_steps, epoch_data, blocks, train_block, states)
        if on_epoch is not None:
            jax.block_until_ready(states)  # so a callback's clock and progress are real
            on_epoch(epoch)
    if num_probes(states) == count:
        return states
    return jax.tree.map(lambda x: x[:count], states)  # the padding copies dropped


def predict_eval(run: ProbeRun, states: dict, *, strategy: str = "auto") -> np.ndarray:
    """[K, Ne, T] logits of stacked states on the eval rows."""
    count = num_probes(states)
    lay, padded = _laid_out(run, states, strategy)
    predict = devices_lib.spread(_predict_block, lay.devices, (("chunk", lay.chunk),), out_axis=1)
    chunks = _eval_chunks(run)
    per_block = max(1, SHARED_BLOCK_BYTES // (4 * run.config.eval_batch_size * _row_floats(run)))
    blocks = _over_blocks(run, lay, _gather_eval, chunks, _blocks(len(chunks), per_block),
                          lambda done, inputs: done + [predict(padded, inputs)], [])
    logits = np.concatenate([np.asarray(block) for block in blocks])
    logits = np.moveaxis(logits, 0, 1)[:count]  # blocks stack chunks first: [C, K, rows, T]
    return logits.reshape(count, -1, run.sizes.num_tasks)[:, :len(run.eval_rows)]


def num_probes(states: dict) -> int:
    return int(states["adam"]["count"].shape[0])


def select(states: dict, index: int) -> dict:
    """Probe `index` of stacked states, keeping a probe axis of size 1."""
    return jax.tree.map(lambda x: x[index:index + 1], states)


STATE_BYTES = 1 << 30  # 1 GiB: probe states resident at once; more probes train in groups (`probe_groups`)


def state_bytes(config: probe_lib.ProbeConfig, sizes: probe_lib.ProbeSizes) -> int:
    """Bytes of one probe's state: its two tables with their optimizer state (`probe.table_bytes`)
    and its dense layers with Adam's two moments (f32)."""
    optimizer = probe_lib.resolved_table_optimizer(config, sizes).table_optimizer
    dense = sum(i * o + o for i, o in probe_lib._mlp_layers(config, sizes)) + sizes.feature_width * config.dim
    return probe_lib.table_bytes(config, sizes, optimizer) + 4 * 3 * dense


def probe_groups(run: ProbeRun, count: int, strategy: str = "auto", budget: int | None = None) -> list[slice]:
    """Consecutive groups of the K probes whose states fit `budget` bytes (default `STATE_BYTES`).

    A probe's state grows with the catalog (at 10^6 items and 2 * 10^5 users, width 16: 230 MB
    with Adam's moments), so a bank of 80 probes would hold 18 GB. The bank trains one group at a
    time instead, the groups sharing the epochs' precomputed batches; probes are independent, so a
    group's results equal the whole bank's. A group is a multiple of the device count (each
    device gets an equal share), at least one probe a device however small the budget.
    """
    budget = STATE_BYTES if budget is None else budget
    unit = len(devices_lib.layout(count, resolve_strategy(strategy)).devices)
    per_group = max(unit, budget // state_bytes(run.config, run.sizes) // unit * unit)
    # as many groups as the budget needs, evened out: equal groups compile one program, not two
    count_groups = -(-count // per_group)
    per_group = -(-count // count_groups // unit) * unit if count_groups > 1 else per_group
    return [slice(start, min(start + per_group, count)) for start in range(0, count, per_group)]


def train_and_predict(run: ProbeRun, seeds, slots, *, parallel: bool = True, strategy: str = "auto",
                      on_epoch=None, state_budget: int | None = None) -> np.ndarray:
    """[K, Ne, T] eval logits of probes (seeds[k], slots[k]), trained as one bank or one at a time.

    Both modes start from the same initial states and run the same `bank_step` / `probe.update`;
    the loop gives it a probe axis of size 1 and reuses one set of batches for every probe. A bank
    whose states exceed `state_budget` bytes (default `STATE_BYTES`) trains in groups
    (`probe_groups`), each initialised, trained and scored in turn on the same batches.
    `ProbeConfig(model="genrank")` probes are trained by `genrank_probe.train_and_predict`.
    """
    if run.config.model == "genrank":
        from genrank_jax.leakage import genrank_probe
        return genrank_probe.train_and_predict(run, seeds, slots, parallel=parallel, on_epoch=on_epoch)
    seeds, slots = np.asarray(seeds), np.asarray(slots)
    if parallel:
        groups = probe_groups(run, len(slots), strategy, state_budget)
        # states are handed to `train` straight from `init_bank`, never held here: train lays them
        # out on the devices (a copy) and donates them to the epoch, so no reference may keep the
        # first copy alive (at 10^6 items it is 230 MB a probe)
        batches = [epoch_batches(run, epoch) for epoch in range(run.config.epochs)] if len(groups) > 1 else None
        outputs = []
        for group in groups:
            # made padded, where they train; the padding copies' results are dropped
            trained = train(run, init_bank(run, seeds[group], slots[group], strategy=strategy), strategy=strategy,
                            batches=batches, on_epoch=on_epoch)
            outputs.append(predict_eval(run, trained, strategy=strategy)[:group.stop - group.start])
            del trained  # before the next group's are made
        return np.concatenate(outputs)
    states = init_bank(run, seeds, slots)
    batches = [epoch_batches(run, epoch) for epoch in range(run.config.epochs)]
    outputs = []
    for k in range(len(slots)):
        state = train(run, select(states, k), strategy=strategy, batches=batches, on_epoch=on_epoch)
        outputs.append(predict_eval(run, state, strategy=strategy)[0])
    return np.stack(outputs)
