"""Partition rules: the one place that says how every parameter is laid out on a mesh.

big_vision style: an ordered list of (regex over the parameter path, layout), first match wins.
A name is the parameter's path in the (model, optimizer) state with '/' separators, without the
state index and NNX's trailing 'value', e.g. "embed/items/item/embedding"; an Adam moment
("opt_state/1/0/mu/embed/items/item/embedding") is named by its parameter, so it takes the
parameter's layout. Patterns match the whole name. A parameter that no rule matches is an error: a new parameter
gets a layout on purpose, never by accident (tests/sharding check every architecture).

Layouts:
  rows        embedding tables that grow with the catalog: rows split over `table_axes`
  replicated  small tables, vectors, norms, heads, optimizer counters
  columns     transformer input projections: columns over "model" when transformer="model"
  vector      their biases: split like the columns
  model_rows  transformer output projections: rows over "model" when transformer="model"

Padding rule: a split dimension must be a multiple of its axes' size. Table rows are padded by the
model (`GenRankConfig.embedding_row_multiple`: every table that grows with the data has its rows
rounded up to a multiple of it; padded rows are never looked up). Choose a multiple of every
table-axis size you will train or restore on (e.g. 8 or 64); the check below names the table and
the fix when a table does not divide.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Literal

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from genrank_jax.sharding.mesh import ShardingError, describe

RULES: tuple[tuple[str, str], ...] = (
    # tables that grow with items and users: GenRank, DIN and the logistic baseline
    (r"(embed/)?items/item/embedding", "rows"),
    (r"(embed/)?items/side/\d+/embedding", "rows"),
    (r"(embed/)?user/embedding", "rows"),
    (r"item/embedding", "rows"),  # the logistic baseline's item bias table
    # per-token tables of fixed small size, learned vectors, the content projection
    (r"(embed/)?(position|request|gap|slot)/embedding", "replicated"),
    (r"(embed/)?(action_vectors|exposure_vector|mask_action)", "replicated"),
    (r"(embed/)?items/content/kernel", "replicated"),
    # the aggregate features' projections: GenRank's token projection and linear path, the features ranker
    (r"embed/aggregates/kernel", "replicated"),
    (r"wide/kernel", "replicated"),
    (r"hidden/(kernel|bias)", "replicated"),
    # transformer / HSTU blocks (Megatron-style when split: column-split in, row-split out)
    (r"blocks/\d+/(qkv|uvqk|mlp_in)/kernel", "columns"),
    (r"blocks/\d+/(uvqk|mlp_in)/bias", "vector"),
    (r"blocks/\d+/(out|mlp_out)/kernel", "model_rows"),
    (r"blocks/\d+/(out|mlp_out)/bias", "replicated"),
    (r"blocks/\d+/(attention_norm|mlp_norm|input_norm|output_norm)/(scale|bias)", "replicated"),
    # task heads; DIN's attention unit and MLP (small, dense); the logistic baseline's bias
    (r"heads/(norm/scale|logits/kernel|logits/bias)", "replicated"),
    (r"(attention_hidden|attention_score|mlp/\d+|out)/(kernel|bias)", "replicated"),
    (r"bias", "replicated"),  # the logistic baseline's per-task bias
    # optimizer bookkeeping: step counters
    (r"opt_state/(\d+/)*count|step", "replicated"),
)


@dataclasses.dataclass(frozen=True)
class ShardingOptions:
    """table_axes: mesh axes the table rows are split over ("model", or ("data", "model") to use
    every device for the tables, as row-wise sharding over all ranks does). transformer:
    "replicated" (data parallel) or "model" (tensor parallel over the model axis)."""

    table_axes: str | tuple[str, ...] = "model"
    transformer: Literal["replicated", "model"] = "replicated"

    def __post_init__(self):
        axes = (self.table_axes,) if isinstance(self.table_axes, str) else tuple(self.table_axes)
        if not axes or not set(axes) <= {"data", "model"}:
            raise ShardingError(f"table_axes must name 'data' and/or 'model', got {self.table_axes!r}")
        if self.transformer not in ("replicated", "model"):
            raise ShardingError(f"transformer must be 'replicated' or 'model', got {self.transformer!r}")


def path_name(path) -> str:
    """The rule name of a jax key path into the (model, optimizer) state or its pure dict."""
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    name = re.sub(r"/value$", "", name)  # NNX Variable payload
    name = re.sub(r"^[01]/", "", name)  # the model's or the optimizer's half of the state
    return re.sub(r"^opt_state/(\d+/)*(mu|nu)/", "", name)  # a moment is named by its parameter


def match_rule(name: str) -> tuple[str, str]:
    """(pattern, layout) of the first rule matching all of `name`; ShardingError if none."""
    for pattern, layout in RULES:
        if re.fullmatch(pattern, name):
            return pattern, layout
    raise ShardingError(f"no partition rule matches parameter {name!r}; add one to "
                        "genrank_jax.sharding.rules.RULES")


def layout_spec(layout: str, ndim: int, options: ShardingOptions) -> P:
    split = options.transformer == "model"
    if layout == "rows":
        axes = options.table_axes
        return P(axes if isinstance(axes, str) else tuple(axes), *([None] * (ndim - 1)))
    if layout == "columns" and split:
        return P(None, "model")
    if layout == "vector" and split:
        return P("model")
    if layout == "model_rows" and split:
        return P("model", None)
    return P()


def _axes_size(mesh: Mesh, entry) -> int:
    if entry is None:
        return 1
    return math.prod(mesh.shape[a] for a in ((entry,) if isinstance(entry, str) else entry))


def state_specs(state, options: ShardingOptions = ShardingOptions()):
    """PartitionSpec per leaf of `state` (an NNX State or a pure dict), from the rules."""
    def spec(path, leaf):
        _, layout = match_rule(path_name(path))
        return layout_spec(layout, len(leaf.shape), options)

    return jax.tree_util.tree_map_with_path(spec, state)


def check_divisible(state, specs, mesh: Mesh) -> None:
    """ShardingError naming every leaf whose split dimension is not a multiple of its axes' size."""
    problems = []

    def check(path, leaf, spec):
        name = path_name(path)
        for dim, entry in enumerate(spec):
            size = _axes_size(mesh, entry)
            if leaf.shape[dim] % size:
                table = dim == 0 and match_rule(name)[1] == "rows"
                problems.append((f"{name} has {leaf.shape[dim]} along dimension {dim}, not a multiple of "
                                 f"mesh axes {entry} (size {size})", table))

    jax.tree_util.tree_map_with_path(check, state, specs)
    problems = list(dict.fromkeys(problems))  # optimizer moments repeat their parameter's problem
    if problems:
        tables = any(table for _, table in problems)
        raise ShardingError(
            f"parameters do not divide over mesh {describe(mesh)}: " + "; ".join(p for p, _ in problems),
            hint=("pad the tables: GenRankConfig(embedding_row_multiple=N), N a multiple of the axis size; padded "
                  "rows are never read" if tables else "use ShardingOptions(transformer='replicated') or a model "
                  "axis that divides these weights"),
            cli_hint=("pad the tables: --embedding-row-multiple N, N a multiple of the axis size" if tables
                      else "use --transformer replicated or a model axis that divides these weights"))


def state_shardings(state, mesh: Mesh, options: ShardingOptions = ShardingOptions()):
    """NamedSharding per leaf of `state` on `mesh`, after checking every split divides."""
    specs = state_specs(state, options)
    check_divisible(state, specs, mesh)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P))
