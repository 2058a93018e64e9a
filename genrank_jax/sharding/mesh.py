"""A named device mesh from a spec such as "data=4,model=2", checked against the devices.

Every mesh has both axes, "data" (the batch is split over it) and "model" (embedding-table rows,
and optionally the transformer weights, are split over it); an axis the spec leaves out has size 1,
so partition rules can always name both. Axes are `AxisType.Auto`: XLA's partitioner propagates
shardings from the rules (`jax.make_mesh` defaults to Explicit axes, which would need every
intermediate annotated).
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from genrank_jax.errors import GenRankError

AXES = ("data", "model")


class ShardingError(GenRankError, ValueError):
    """A mesh, batch or parameter layout that cannot work; raised before any computation."""


def parse_mesh_spec(spec: str) -> dict[str, int]:
    """{"data": 4, "model": 2} from "data=4,model=2" (missing axes: 1)."""
    sizes = {axis: 1 for axis in AXES}
    seen = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        match = re.fullmatch(r"(\w+)\s*=\s*(-?\d+)", part)
        if match is None:
            raise ShardingError(f"mesh spec {spec!r}: {part!r} is not axis=size (e.g. 'data=4,model=2')")
        axis, size = match.group(1), int(match.group(2))
        if axis not in AXES:
            raise ShardingError(f"mesh spec {spec!r}: unknown axis {axis!r}; the axes are {AXES}")
        if axis in seen:
            raise ShardingError(f"mesh spec {spec!r}: axis {axis!r} is given twice")
        if size < 1:
            raise ShardingError(f"mesh spec {spec!r}: axis {axis!r} must have a positive size, got {size}")
        seen.add(axis)
        sizes[axis] = size
    if not seen:
        raise ShardingError(f"mesh spec {spec!r} names no axis (e.g. 'data=4,model=2')")
    return sizes


def make_mesh(spec: str | dict[str, int], devices=None) -> Mesh:
    """A ("data", "model") mesh over `devices` (default: every device of every process).

    The sizes must multiply to the number of devices: a mesh that leaves devices idle or asks for
    more than there are is refused here, before anything is compiled.
    """
    sizes = parse_mesh_spec(spec) if isinstance(spec, str) else {**{a: 1 for a in AXES}, **spec}
    unknown = set(sizes) - set(AXES)
    if unknown:
        raise ShardingError(f"unknown mesh axes {sorted(unknown)}; the axes are {AXES}")
    devices = list(jax.devices() if devices is None else devices)
    shape = tuple(sizes[a] for a in AXES)
    if math.prod(shape) != len(devices):
        raise ShardingError(
            f"mesh {describe(sizes)} needs {math.prod(shape)} devices but there are {len(devices)} "
            f"({devices[0].platform if devices else 'none'}); the axis sizes must multiply to the device count")
    if devices == list(jax.devices()):
        # jax orders the devices for the interconnect (and keeps each process's devices together)
        return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))
    return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=(AxisType.Auto,) * len(AXES))


def describe(mesh_or_sizes) -> str:
    """'data=4,model=2' for a mesh (concrete or abstract) or a size dict."""
    sizes = dict(getattr(mesh_or_sizes, "shape", mesh_or_sizes))
    return ",".join(f"{axis}={sizes[axis]}" for axis in AXES)
