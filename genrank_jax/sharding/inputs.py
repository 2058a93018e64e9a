"""Input per process: each process builds only the rows of the global batch its devices hold.

The batch order is the single-process order (`plan_batches`, a pure function of seed and epoch),
so every process agrees on each batch's requests and padded shape without talking, and a run
resumed at step s sees the same batches as an uninterrupted one. A process builds its rows,
and `jax.make_array_from_process_local_data` joins the processes' rows into one global array
split over the mesh's "data" axis. On one process the rows are the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from genrank_jax.data.batching import BatchPlan, batch_shape, plan_batches
from genrank_jax.data.samples import SampleBuilder
from genrank_jax.data.tokens import TokenBatch
from genrank_jax.sharding.mesh import ShardingError, describe


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Every batch array is split along its leading (batch) axis over "data"."""
    return NamedSharding(mesh, P("data"))


def check_batch_size(mesh: Mesh, batch_size: int) -> None:
    data = mesh.shape["data"]
    if batch_size % data:
        raise ShardingError(f"batch size {batch_size} is not a multiple of the data axis ({data}) of mesh "
                            f"{describe(mesh)}: each data shard must get the same number of rows")


def process_rows(mesh: Mesh, batch_size: int) -> slice:
    """The rows of a global batch of `batch_size` that this process's devices hold."""
    check_batch_size(mesh, batch_size)
    held = batch_sharding(mesh).addressable_devices_indices_map((batch_size,)).values()
    rows = sorted({(index[0].start or 0, batch_size if index[0].stop is None else index[0].stop) for index in held})
    start, stop = rows[0][0], rows[-1][1]
    if sum(b - a for a, b in rows) != stop - start:  # jax.make_mesh keeps a process's devices together
        raise ShardingError(f"this process's devices hold rows {rows} of the batch, not one contiguous "
                            f"block; build the mesh with genrank_jax.sharding.make_mesh")
    return slice(start, stop)


def local_batches(builder: SampleBuilder, requests: np.ndarray, plan: BatchPlan, rows: slice,
                  epoch: int = 0, skip: int = 0) -> Iterator[TokenBatch]:
    """This process's `rows` of each batch `iterate_batches` would yield (same shapes on every
    process: the padded length comes from the whole batch's requests)."""
    for group in plan_batches(builder, requests, plan, epoch)[skip:]:
        seq_len, slots = batch_shape(builder, group)
        yield builder.build(group[rows], seq_len, rows.stop - rows.start, candidate_slots=slots)


def global_batch(local: TokenBatch, mesh: Mesh, batch_size: int) -> TokenBatch:
    """The global batch (jax arrays split over "data") from every process's local rows."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), (batch_size,) + x.shape[1:]),
        local)
