"""A model trained on a user's own log keeps its raw-id vocabulary: beside the checkpoints, in
the export, checked against both, and applied the same way by serving."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genrank_jax.cli import main
from genrank_jax.errors import GenRankError
from genrank_jax.serving.export import load_checkpoint_vocabulary, load_vocabulary
from tests.data import own_log_files as files


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("own_log")
    log, schema = files.write(folder)
    import os
    os.environ["GENRANK_TFDS_DIR"] = str(folder / "tfds")
    try:
        assert main(["train", "--data", f"log:{log}", "--schema", str(schema), "--steps", "2",
                     "--checkpoint-every", "2", "--validation-fraction", "0", "--out", str(folder / "run"),
                     "--no-progress"]) == 0
        assert main(["export", "--checkpoint", str(folder / "run" / "checkpoints"),
                     "--out", str(folder / "scorer")]) == 0
    finally:
        del os.environ["GENRANK_TFDS_DIR"]
    return folder


def test_vocabulary_travels_from_training_to_the_export(trained):
    from genrank_jax.data import load_dataset

    dataset = load_dataset(f"log:{trained / 'log.parquet'}", schema=trained / "schema.toml", tfds_dir=trained / "tfds")
    saved = load_checkpoint_vocabulary(trained / "run" / "checkpoints")
    exported = load_vocabulary(trained / "scorer")
    assert saved.digest() == exported.digest() == dataset.vocabulary.digest()
    manifest = json.loads((trained / "scorer" / "manifest.json").read_text())
    assert manifest["vocabulary"]["file"] == "vocabulary.npz"
    raw = files.log_table()["movie"].to_pylist()[:40] + [123_456_789]  # the last one never seen
    np.testing.assert_array_equal(exported.items.lookup(raw), dataset.vocabulary.items.lookup(raw))
    assert exported.items.lookup([123_456_789])[0] >= exported.items.num_known


def test_a_swapped_vocabulary_is_refused(trained, tmp_path):
    import shutil

    scorer = tmp_path / "scorer"
    shutil.copytree(trained / "scorer", scorer)
    other = files.write(tmp_path / "other", files.log_table(seed=11))
    from genrank_jax.data import load_dataset

    dataset = load_dataset(f"log:{other[0]}", schema=other[1], tfds_dir=tmp_path / "tfds")
    dataset.vocabulary.save(scorer / "vocabulary.npz")
    with pytest.raises(GenRankError, match="not the vocabulary"):
        load_vocabulary(scorer)
