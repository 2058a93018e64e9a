"""Model and optimizer state created directly in its sharded layout.

The state is never built whole on one host: its shapes come from `nnx.eval_shape`, the rules give
each leaf a sharding, and a jitted init writes each device's shard where it lives (a 10^8-row table
never exists outside its shards).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx
from jax.sharding import Mesh

from genrank_jax.sharding.rules import ShardingOptions, state_shardings


def init_sharded(make: Callable[[], tuple], mesh: Mesh, options: ShardingOptions = ShardingOptions()):
    """(graphdef, state, shardings) of the modules `make()` returns, the state placed by the rules."""
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    shardings = state_shardings(abstract, mesh, options)
    state = jax.jit(lambda: nnx.state(make()), out_shardings=shardings)()
    return graphdef, state, shardings
