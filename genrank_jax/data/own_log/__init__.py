"""A user's own exposure log as a dataset: `load_dataset("log:PATH", schema="schema.toml")`.

schema.py (the schema file), reader.py (pyarrow record batches, checked), vocabulary.py (raw ids
to dense ids from the train split, OOV buckets), builder.py (the TFDS records), beam_pipeline.py
(the same builder on Apache Beam), side_tables.py (item/user tables, content), loading.py (prepare
once, load as a RankingDataset).
"""

from genrank_jax.data.own_log.loading import load_log, prepare_log
from genrank_jax.data.own_log.schema import LogSchema, SchemaError, load_schema
from genrank_jax.data.own_log.vocabulary import FeatureVocabulary, IdVocabulary, Vocabulary
from genrank_jax.data.own_log.writer import write_log

__all__ = ["load_log", "prepare_log", "LogSchema", "SchemaError", "load_schema", "FeatureVocabulary",
           "IdVocabulary", "Vocabulary", "write_log"]
