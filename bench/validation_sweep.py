"""One setting on one dataset's validation slice (never eval): the best validation AUC of the first
action under early stopping, as one JSON line. How issue 26's defaults were chosen:

    python bench/validation_sweep.py ml-latest-small agg-wide '{"use_aggregates": true}'

DATA is ml-100k, ml-latest-small (../shared/data) or simulator (synthetic:default); the JSON is
GenRankConfig overrides on top of the data-size rule (genrank_jax/training/defaults.py), with "train" for
TrainConfig fields and "preset". Results: bench/results/defaults_validation_sweep.md.
"""
import json
import pathlib
import sys
import time

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
sys.path.insert(0, str(pathlib.Path(__file__).parent))
from genrank_jax.data.batching import padded_max_tokens  # noqa: E402
from genrank_jax.data.sources import load_dataset  # noqa: E402
from genrank_jax.model.config import GenRankConfig  # noqa: E402
from genrank_jax.training import TrainConfig, Trainer  # noqa: E402
from genrank_jax.training.defaults import defaults_for  # noqa: E402

DATA = {"ml-100k": ("movielens:100k", str(SHARED / "ml-100k")),
        "ml-latest-small": ("movielens:latest-small", str(SHARED / "ml-latest-small")),
        "simulator": ("synthetic:default", None)}
data_name, variant = sys.argv[1], sys.argv[2]
overrides = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
train_over = overrides.pop("train", {})
preset = overrides.pop("preset", None)
source, raw = DATA[data_name]
dataset = load_dataset(source, data_dir=raw)
d = defaults_for(dataset)
mh = train_over.get("max_history", d.max_history)
train = TrainConfig(epochs=train_over.get("epochs", d.epochs), steps=d.steps or 500, batch_size=64,
                    learning_rate=train_over.get("learning_rate", d.learning_rate),
                    weight_decay=train_over.get("weight_decay", d.weight_decay), seed=train_over.get("seed", 0),
                    max_history=mh,
                    max_candidates=d.max_candidates, validation_fraction=d.validation_fraction, patience=d.patience)
org = overrides.get("organization", "action")
config = GenRankConfig.preset(preset or d.preset, dataset.spec, **{**d.config, **overrides},
                              max_tokens=padded_max_tokens(org, mh, d.max_candidates))
t = Trainer(config, train, dataset)
s = time.time()
t.fit()
best = t.best
print(json.dumps({"data": data_name, "variant": variant, "val_like_auc": round(best["auc"], 4),
                  "epoch": best["epoch"], "seconds": round(time.time() - s, 1)}), flush=True)
