"""Training on a JAX device mesh: named axes, partition rules, per-process input.

  make_mesh("data=4,model=2")       a ("data", "model") mesh, sizes checked against the devices
  RULES, ShardingOptions            the partition rules (rules.py) and their options
  state_shardings(state, mesh)      a NamedSharding per parameter / optimizer leaf, checked
  process_rows, local_batches,      each process builds its rows of the global batch
  global_batch
  genrank_jax.kernels.sharded       the attention op per device block under a mesh

`Trainer(..., mesh=make_mesh(...))` and `genrank-jax train --mesh data=4,model=2` use them.
"""

from genrank_jax.sharding.inputs import batch_sharding, check_batch_size, global_batch, local_batches, process_rows
from genrank_jax.sharding.mesh import AXES, ShardingError, describe, make_mesh, parse_mesh_spec
from genrank_jax.sharding.rules import RULES, ShardingOptions, match_rule, path_name, state_shardings, state_specs
from genrank_jax.sharding.state import init_sharded

__all__ = [
    "AXES", "RULES", "ShardingError", "ShardingOptions", "batch_sharding", "check_batch_size", "describe",
    "global_batch", "init_sharded", "local_batches", "make_mesh", "match_rule", "parse_mesh_spec", "path_name",
    "process_rows", "state_shardings", "state_specs",
]
