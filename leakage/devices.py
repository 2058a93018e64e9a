"""Where the probe bank's probes run: stacks of probes, spread over the local devices.

The bank's probe axis [K] is padded to `Layout.padded` = devices x stacks x chunk (the padding
copies' results are dropped) and cut into equal slices, one per device; each device runs its slice
as stacks of `chunk` probes (`bank._train_block`). Probes share no parameter, so the devices never
talk: a block of steps is a `shard_map` over a one-axis mesh "probes", every device reading the same
shared batches (replicated; gathered from the log once, on the device that holds it).

On a host with several GPUs or TPU cores this spreads the bank over all of them; with several
processes (`jax.distributed.initialize`) over every device of every process: each process places
its shards of the same host values, and the host reads results gathered from all processes. On a CPU, JAX
shows one device by default, which runs one op at a time on all cores; `use_every_cpu_core()`
asks JAX for one CPU device per core before its backend starts (the `genrank-jax lis` command and
the benchmarks call it), so each core runs its own stacks and the serial ops of one stack
(scatters, small reductions) no longer leave the other core idle. Measured on this 2-core CPU
(ml-100k, one epoch, `bench/bench_leakage.py` setup): 64 probes took 4.2 to 4.4 s on two devices
with stacks of 4, against 4.8 to 5.3 s on one device with stacks of 8; four devices on two cores
were slower (5.5 s).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "probes"
CPU_CHUNK = 8  # probes per stack on a CPU whose cores all serve one device (see `layout`)
CPU_CHUNK_SPREAD = 4  # probes per stack when the bank is spread over several CPU devices


def resolve_strategy(strategy: str) -> str:
    """How a device runs its probes: "vmap" (all of them as one batched stack), "map" (`lax.map`
    over stacks of up to `CPU_CHUNK` probes) or "auto": "map" on CPU, "vmap" elsewhere.

    Both run the same `probe.update` on an explicit probe axis (the form `jax.vmap` would give,
    but with the batch's gathers shared by all probes). On a GPU one stack of all probes fills the
    device. On this 2-core CPU with one device, stacks of 8 ran fastest: per probe, 0.080 s an
    epoch on ml-100k against 0.092 s alone (the batched matmuls run nearer the peak); stacks of
    16 or more were slower again, their working set falling out of cache. Spread over two CPU
    devices (one core each), stacks of 4 were fastest (2 and 8 were 2% and 12% slower at K=64).
    """
    if strategy == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    if strategy not in ("vmap", "map"):
        raise ValueError(f"strategy must be 'auto', 'vmap' or 'map', got {strategy!r}")
    return strategy


@dataclasses.dataclass(frozen=True)
class Layout:
    """K probes laid out as `devices` x stacks x `chunk` (`padded` >= K slots in all)."""

    devices: tuple
    chunk: int
    padded: int

    @property
    def spread(self) -> bool:
        return len(self.devices) > 1


def layout(num_probes: int, strategy: str, *, one_stack: bool = False) -> Layout:
    """Spread K probes over the default backend's local devices (at most one device per probe, so
    a probe trained alone runs on one device), then cut each device's share into equal stacks:
    all of it ("vmap", or `one_stack`), else ceil(share / limit) stacks of at most `CPU_CHUNK`
    probes (one device) or `CPU_CHUNK_SPREAD` (several). Equal stacks give one shape, so the step
    compiles once. `one_stack` suits states far larger than a cache (a large catalog's tables):
    small stacks then only cost the copies of each stack in and out of the device's share."""
    if num_probes < 1:
        raise ValueError(f"need at least one probe, got {num_probes}")
    # several processes: every device of every process, so each process holds a slice
    devices = tuple(jax.local_devices()[:num_probes] if jax.process_count() == 1 else jax.devices())
    share = -(-num_probes // len(devices))
    if strategy == "vmap" or one_stack:
        chunk = share
    else:
        limit = CPU_CHUNK_SPREAD if len(devices) > 1 else CPU_CHUNK
        chunk = -(-share // -(-share // limit))
    stacks = -(-share // chunk)
    return Layout(devices, chunk, len(devices) * stacks * chunk)


@functools.lru_cache(maxsize=8)
def _mesh(devices: tuple) -> Mesh:
    return Mesh(np.array(devices), (AXIS,))


def place(tree, lay: Layout, *, probe_axis: int | None = 0):
    """Leaves on the layout's devices: split along `probe_axis`, or replicated (None)."""
    if not lay.spread:
        return tree
    spec = PartitionSpec() if probe_axis is None else PartitionSpec(*([None] * probe_axis), AXIS)
    sharding = NamedSharding(_mesh(lay.devices), spec)
    local = [d for d in lay.devices if d.process_index == jax.process_index()]

    def replicate(leaf):  # from one local device: that copy is reused, the other local devices get one
        # each; every process holds the same values and gives its own devices' shards
        held = {d: leaf for d in leaf.devices()}
        shards = [held[d] if d in held else jax.device_put(leaf, d) for d in local]
        return jax.make_array_from_single_device_arrays(leaf.shape, sharding, shards)

    def on_one_local_device(x):
        return isinstance(x, jax.Array) and len(x.devices()) == 1 and x.is_fully_addressable

    if probe_axis is None and all(on_one_local_device(x) for x in jax.tree.leaves(tree)):
        return jax.tree.map(replicate, tree)
    if jax.process_count() == 1:
        if probe_axis is not None:
            return jax.device_put(tree, sharding)
        return jax.tree.map(lambda x: replicate(jnp.asarray(x)), tree)

    def host_to_mesh(x):  # every process holds the same values; each places its devices' shards
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(host_to_mesh, tree)


@functools.lru_cache(maxsize=32)
def spread(program, devices: tuple, static: tuple = (), *, out_axis: int = 0, donate: bool = False,
           replicated: int = 1):
    """`program(states, *inputs, **dict(static))`, run by every device on its slice of the
    states' probe axis (the `replicated` inputs are whole on every device); its output is split
    along `out_axis`.
    One jit per (program, devices, static), cached; on one device, the program's plain jit.
    Over several processes a program that does not donate its states returns results for the
    host: replicated, so every process reads all of them."""
    bound = functools.partial(program, **dict(static))
    if len(devices) > 1:
        specs = (PartitionSpec(AXIS),) + (PartitionSpec(),) * replicated
        out = PartitionSpec(*([None] * out_axis), AXIS)
        bound = jax.shard_map(bound, mesh=_mesh(devices), in_specs=specs, out_specs=out)
    gathered = len({d.process_index for d in devices}) > 1 and not donate
    return jax.jit(bound, donate_argnums=(0,) if donate else (),
                   out_shardings=NamedSharding(_mesh(devices), PartitionSpec()) if gathered else None)


def use_every_cpu_core(cores: int | None = None) -> int:
    """Ask JAX for one CPU device per core (default: the cores this process may use), so the bank
    runs a slice of its probes on each. Call it before any JAX computation; once JAX's backend
    has started the device count cannot change, and this warns and keeps it. A count set by the
    user (JAX's `jax_num_cpu_devices` or `--xla_force_host_platform_device_count`) is kept.
    Returns the number of CPU devices JAX will have.
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if jax.config.jax_num_cpu_devices > 0 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return len(jax.devices("cpu"))
    try:
        jax.config.update("jax_num_cpu_devices", int(cores))
    except RuntimeError:  # the backend is up: the probe bank then runs on the devices it has
        warnings.warn("use_every_cpu_core(): JAX has already started, so its CPU device count stays "
                      f"{len(jax.devices('cpu'))}; call it before the first JAX computation", stacklevel=2)
    return len(jax.devices("cpu"))
