"""LIS / AIS: how much a kind of data (a leak of future behaviour, or an item representation)
can move a ranker's AUC, measured with banks of small probe rankers and intervals over seeds."""

from genrank_jax.leakage.bank import Feature
from genrank_jax.leakage.devices import use_every_cpu_core
from genrank_jax.leakage.impact import leakage_impact
from genrank_jax.leakage.leaks import cooccurrence_neighbors, future_item_embeddings, item_codebook, next_item
from genrank_jax.leakage.log import InteractionLog
from genrank_jax.leakage.probe import ProbeConfig
from genrank_jax.leakage.report import LeakageReport, LeakageRow
from genrank_jax.leakage.times import parse_cutoff, parse_duration, parse_time

__all__ = [
    "Feature", "InteractionLog", "LeakageReport", "LeakageRow", "ProbeConfig",
    "cooccurrence_neighbors", "future_item_embeddings", "item_codebook", "leakage_impact", "next_item",
    "parse_cutoff", "parse_duration", "parse_time", "use_every_cpu_core",
]
