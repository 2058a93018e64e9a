"""Data: the dataset contract, the feed simulator, real-dataset builders, samples and batches."""

from genrank_jax.data.aggregates import (
    AggregateScaling,
    aggregate_columns,
    aggregate_features,
    aggregate_names,
    aggregate_scaling,
)
from genrank_jax.data.batching import BatchPlan, bucket_length, iterate_batches, plan_batches
from genrank_jax.data.builders.rows import DataError, MalformedRowError, MissingFileError
from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.schema import FeatureSpec, Interactions, ItemCatalog, RankingDataset
from genrank_jax.data.sources import load_dataset
from genrank_jax.data.synthetic import SimulatedFeed, SimulatorConfig, simulate
from genrank_jax.data.tokens import NO_ITEM, TokenBatch, TokenKind

__all__ = [
    "BatchPlan", "bucket_length", "iterate_batches", "plan_batches", "SampleBuilder", "SampleLayout",
    "FeatureSpec", "Interactions", "ItemCatalog", "RankingDataset", "load_dataset", "SimulatedFeed",
    "SimulatorConfig", "simulate", "NO_ITEM", "TokenBatch", "TokenKind", "DataError", "MalformedRowError",
    "MissingFileError", "AggregateScaling", "aggregate_columns", "aggregate_features", "aggregate_names",
    "aggregate_scaling",
]
