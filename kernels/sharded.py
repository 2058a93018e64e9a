"""The attention op under a mesh: each device runs the op on its own block (`shard_map`).

A Pallas kernel is a custom call XLA cannot partition: given a global array inside a sharded
`jit`, XLA would gather it onto every device. Here the batch is split over the mesh's "data" axis
and the heads over "model" (when it divides them), so a kernel only ever sees one device's
[B / data, S, H / model, D] block; attention is independent per sample and per head, so no device
talks to another. The "xla" reference path runs the same way.

The mesh is the one passed, else the one `jax.set_mesh` made current (the trainer sets it). With
no mesh, or one without a "data" axis, this is `genrank_jax.kernels.attention` itself.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

from genrank_jax.kernels.attention import attention as attention_op


def _axis_size(mesh, name: str) -> int:
    return dict(mesh.shape).get(name, 1)


def attention(q, k, v, *, lengths, num_candidates=None, positions=None, timestamps=None,
              alibi_slopes=None, time_slopes=None, mesh=None, **options):
    """`genrank_jax.kernels.attention` (same arguments and result), run per device block of `mesh`."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    arrays = dict(lengths=lengths, num_candidates=num_candidates, positions=positions, timestamps=timestamps,
                  alibi_slopes=alibi_slopes, time_slopes=time_slopes)
    if mesh.empty or "data" not in mesh.axis_names:
        return attention_op(q, k, v, **arrays, **options)
    batch, _, num_heads, _ = q.shape
    data, model = _axis_size(mesh, "data"), _axis_size(mesh, "model")
    if batch % data:
        raise ValueError(f"attention under a mesh: batch {batch} is not a multiple of the data axis ({data})")
    heads = "model" if model > 1 and num_heads % model == 0 else None
    per_head = P(heads)
    specs = dict(lengths=P("data"), num_candidates=P("data"), positions=P("data", None),
                 timestamps=P("data", None), alibi_slopes=per_head, time_slopes=per_head)
    given = {name: value for name, value in arrays.items() if value is not None}
    block = P("data", None, heads, None)

    def per_device(q, k, v, given):
        return attention_op(q, k, v, **given, **options)

    # check_vma=False: a pallas_call does not declare how its output varies over mesh axes
    return jax.shard_map(per_device, mesh=mesh, in_specs=(block, block, block, {n: specs[n] for n in given}),
                         out_specs=block, check_vma=False)(q, k, v, given)


__all__ = ["attention"]
