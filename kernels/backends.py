"""The one registry of attention backends, for both ops (the full op and the cached serving op).

A backend is any object with the `Backend` interface below. The built-in ones are `ModuleBackend`s:
their code is imported on first use, so a backend whose jax API is missing still reports why
through `unavailable_reason` instead of breaking `import genrank_jax.kernels`.

`PREFERENCES` lists, per op and platform, the backends `impl=None` tries, best first; the op's
jnp reference (`REFERENCE`) is the last resort everywhere and the only choice on a CPU.
`selection.py` walks this list (and self-checks each candidate); the ops dispatch by name here.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Literal, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

Op = Literal["attention", "cached"]
OPS: tuple[Op, ...] = ("attention", "cached")
REFERENCE = "xla"  # every op's jnp reference: the self-check's oracle, never checked itself


@runtime_checkable
class Backend(Protocol):
    """What the registry holds: one way to run one op."""

    name: str
    op: Op
    differentiable: bool  # False: inference only, the self-check compares the forward pass alone

    def unavailable_reason(self, interpret: bool) -> str | None:
        """None when it can run on the default device (`interpret`: in the Pallas interpreter)."""

    def accepts(self, dtype: Any) -> bool:
        """Whether the compiled backend takes inputs of `dtype` (`impl=None` skips it otherwise)."""

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, *, interpret: bool, block_sizes: Any,
                 **arguments: Any) -> jax.Array:
        """The op on arguments already validated and defaulted by the public function."""


@dataclasses.dataclass(frozen=True)
class ModuleBackend:
    """A backend whose code is `genrank_jax.kernels.<module>.<function>`, imported on first use."""

    name: str
    op: Op
    module: str
    function: str
    # The module whose `unavailable_reason(interpret)` speaks for this backend; None: it runs
    # wherever jax does (the references).
    reason_from: str | None = None
    kernel: bool = True  # a Pallas kernel: takes `interpret=` and `block_sizes=`
    differentiable: bool = True
    sixteen_bit_only: bool = False  # when compiled (Hopper's WGMMA would run f32 as TF32)

    def _import(self, module: str):
        return importlib.import_module(f"genrank_jax.kernels.{module}")

    def unavailable_reason(self, interpret: bool) -> str | None:
        try:
            self._import(self.module)
            judge = None if self.reason_from is None else self._import(self.reason_from)
        except ImportError as error:  # backends report a missing jax API themselves; this is a broken install
            return f"{self.name} cannot be imported with jax {jax.__version__}: {error}"
        return None if judge is None else judge.unavailable_reason(interpret)

    def accepts(self, dtype: Any) -> bool:
        return not self.sixteen_bit_only or jnp.dtype(dtype).itemsize == 2

    def __call__(self, q, k, v, *, interpret: bool, block_sizes: Any, **arguments):
        function = getattr(self._import(self.module), self.function)
        if not self.kernel:  # the references have neither an interpreter nor tiles
            return function(q, k, v, **arguments)
        return function(q, k, v, **arguments, interpret=interpret, block_sizes=block_sizes)


_REGISTRY: dict[Op, dict[str, Backend]] = {op: {} for op in OPS}

PREFERENCES: dict[Op, dict[str, tuple[str, ...]]] = {
    "attention": {"gpu": ("pallas_mosaic_gpu", "pallas_triton"), "tpu": ("pallas_tpu",)},
    "cached": {"gpu": ("pallas_triton",)},
}


def register(backend: Backend) -> None:
    """Add `backend` under (backend.op, backend.name); a name is registered once per op."""
    if not isinstance(backend, Backend):
        raise TypeError(f"{backend!r} does not have the Backend interface")
    if backend.op not in _REGISTRY:
        raise ValueError(f"backend {backend.name!r} is for op {backend.op!r}; ops are {OPS}")
    if backend.name in _REGISTRY[backend.op]:
        raise ValueError(f"the {backend.op} op already has a backend named {backend.name!r}")
    _REGISTRY[backend.op][backend.name] = backend


def unregister(op: Op, name: str) -> None:
    """Remove a backend `register` added (tests register stand-ins and take them out again)."""
    del _REGISTRY[op][name]


def names(op: Op) -> tuple[str, ...]:
    """The op's backend names, in registration order (the reference first)."""
    return tuple(_REGISTRY[op])


def lookup(op: Op, name: str) -> Backend | None:
    """The op's backend `name`, or None when it has none by that name."""
    return _REGISTRY[op].get(name)


def preferences(op: Op, platform: str) -> tuple[str, ...]:
    """The backends `impl=None` tries on `platform`, best first (the reference comes after them)."""
    return PREFERENCES[op].get(platform, ())


for _backend in (
    ModuleBackend("xla", "attention", "reference", "attention_reference", kernel=False),
    ModuleBackend("pallas_triton", "attention", "pallas_triton", "attention", reason_from="pallas_triton"),
    ModuleBackend("pallas_mosaic_gpu", "attention", "pallas_mosaic_gpu", "attention",
                  reason_from="pallas_mosaic_gpu", sixteen_bit_only=True),
    ModuleBackend("pallas_tpu", "attention", "pallas_tpu", "attention", reason_from="pallas_tpu"),
    ModuleBackend("xla", "cached", "cached_reference", "cached_attention_reference", kernel=False),
    # the cached kernel runs wherever the full op's Triton kernels do, and refuses gradients
    ModuleBackend("pallas_triton", "cached", "pallas_cached", "cached_attention",
                  reason_from="pallas_triton", differentiable=False),
):
    register(_backend)
del _backend
