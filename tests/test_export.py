"""`genrank-jax export`: a trained checkpoint's encode/score, loaded by a process that imports only jax."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from genrank_jax import cli
from genrank_jax.data.aggregates import aggregate_features
from genrank_jax.data.samples import SampleBuilder, SampleLayout
from genrank_jax.data.sources import load_dataset
from genrank_jax.serving import Candidates, History, split_batch
from genrank_jax.serving.export import load_checkpoint_model, load_export

FAST = ["--preset", "tiny", "--steps", "2", "--batch-size", "8", "--max-history", "16", "--no-progress",
        "--checkpoint-every", "2"]

# Runs in a fresh interpreter: numpy and jax only; fails if anything imported genrank_jax.
LOADER = """
import sys, numpy as np, jax
folder, inputs, output = sys.argv[1:]
load = lambda name: jax.export.deserialize(bytearray(open(f"{folder}/{name}.jaxexport", "rb").read()))
encode, score = load("encode"), load("score")
stored = np.load(f"{folder}/params.npz")
params = [stored[f"arr_{i}"] for i in range(len(stored.files))]
x = np.load(inputs)
history = {k[len("history."):]: x[k] for k in x.files if k.startswith("history.")}
candidates = {k[len("candidates."):]: x[k] for k in x.files if k.startswith("candidates.")}
cache = encode.call(params, history, candidates["num_candidates"])
np.save(output, np.asarray(score.call(params, cache, candidates)))
# the same artifacts at other sizes (symbolic b, n, m): 2 users, 3 fewer history tokens, 1 fewer candidate slot
history = {k: v[:2, :-3] if v.ndim >= 2 else v[:2] for k, v in history.items()}
history["lengths"] = np.minimum(history["lengths"], history["item_ids"].shape[1])
candidates = {k: v[:2, :-1] if v.ndim >= 2 else v[:2] for k, v in candidates.items()}
candidates["num_candidates"] = np.minimum(candidates["num_candidates"], candidates["item_ids"].shape[1])
cache = encode.call(params, history, candidates["num_candidates"])
np.save(output + ".small.npy", np.asarray(score.call(params, cache, candidates)))
assert not [m for m in sys.modules if m.startswith("genrank_jax")], "the loader imported genrank_jax"
"""


@pytest.mark.parametrize("aggregates", [True, False], ids=["default-aggregates", "no-aggregates"])
def test_exported_scorer_in_a_jax_only_process_equals_library_score(tmp_path, capsys, aggregates):
    run = tmp_path / "run"
    flags = [] if aggregates else ["--no-aggregates"]
    assert cli.main(["train", "--data", "synthetic:tests", "--out", str(run), *FAST, *flags]) == 0
    scorer = tmp_path / "scorer"
    assert cli.main(["export", "--checkpoint", str(run / "checkpoints"), "--out", str(scorer),
                     "--platforms", "cpu,cuda"]) == 0
    assert "exported step 2" in capsys.readouterr().out
    manifest = json.loads((scorer / "manifest.json").read_text())
    assert manifest["platforms"] == ["cpu", "cuda"] and manifest["symbolic_dims"].keys() == {"b", "n", "m"}
    assert ("aggregates" in manifest["encode"]["history"]) == ("aggregates" in manifest) == aggregates

    model, step = load_checkpoint_model(run / "checkpoints")
    assert step == 2 and model.config.use_aggregates == aggregates
    dataset = load_dataset("synthetic:tests")
    builder = SampleBuilder(dataset, SampleLayout(max_history=16, aggregates=aggregates))
    if aggregates:  # the export's scaling makes exactly the inputs training gave the model
        scaling = load_export(scorer).aggregate_scaling
        np.testing.assert_array_equal(aggregate_features(dataset, scaling=scaling), builder.aggregates)
    requests = np.asarray(dataset.eval_requests)
    requests = requests[builder.history_count[requests] >= 1][:3]
    history, candidates = split_batch(builder.build(requests, int(builder.token_counts(requests).max())))
    want = np.asarray(model.score(model.encode_history(history), candidates))
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, **{f"history.{k}": np.asarray(v) for k, v in vars(history).items() if v is not None},
             **{f"candidates.{k}": np.asarray(v) for k, v in vars(candidates).items() if v is not None})
    output = tmp_path / "logits.npy"
    done = subprocess.run([sys.executable, "-c", LOADER, str(scorer), str(inputs), str(output)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(output), want, atol=1e-5, rtol=1e-6)
    small_history = History(**{k: np.asarray(v)[:2, :-3] if np.ndim(v) >= 2 else np.asarray(v)[:2]
                               for k, v in vars(history).items() if v is not None})
    small_history = dataclasses.replace(small_history, lengths=np.minimum(small_history.lengths,
                                                                          small_history.item_ids.shape[1]))
    small = Candidates(**{k: np.asarray(v)[:2, :-1] if np.ndim(v) >= 2 else np.asarray(v)[:2]
                          for k, v in vars(candidates).items() if v is not None})
    small = dataclasses.replace(small, num_candidates=np.minimum(small.num_candidates, small.item_ids.shape[1]))
    want_small = np.asarray(model.score(model.encode_history(small_history), small))
    np.testing.assert_allclose(np.load(str(output) + ".small.npy"), want_small, atol=1e-5, rtol=1e-6)
    assert np.abs(want).max() > 0.01


def test_a_model_reading_aggregates_exports_only_with_its_own_scaling(tmp_path, capsys):
    """The scaling beside the checkpoints is required (a model fed differently scaled aggregates
    scores plausibly wrong), and an export's scaling must be the one its manifest names."""
    import shutil

    from genrank_jax.errors import GenRankError

    run = tmp_path / "run"
    assert cli.main(["train", "--data", "synthetic:tests", "--out", str(run), *FAST]) == 0
    saved = run / "checkpoints" / "aggregates.json"
    shutil.move(saved, tmp_path / "aside.json")
    assert cli.main(["export", "--checkpoint", str(run / "checkpoints"), "--out", str(tmp_path / "scorer")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrank-jax export:") and "aggregates.json" in err and "\n" not in err
    assert not (tmp_path / "scorer").exists()
    shutil.move(tmp_path / "aside.json", saved)
    assert cli.main(["export", "--checkpoint", str(run / "checkpoints"), "--out", str(tmp_path / "scorer")]) == 0
    assert "aggregates.json" in capsys.readouterr().out
    tampered = json.loads((tmp_path / "scorer" / "aggregates.json").read_text())
    tampered["mean"][0] += 1.0
    (tmp_path / "scorer" / "aggregates.json").write_text(json.dumps(tampered))
    with pytest.raises(GenRankError, match="not the aggregate scaling"):
        load_export(tmp_path / "scorer")


@pytest.mark.parametrize("argv,message", [
    (["--platforms", "gpu"], "unknown export platform"),
    (["--checkpoint", "/nonexistent/checkpoints"], "no checkpoint folder"),
])
def test_export_errors_are_one_line(tmp_path, capsys, argv, message):
    base = {"--checkpoint": str(tmp_path), "--out": str(tmp_path / "scorer"), "--platforms": "cpu"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    (tmp_path / "x").mkdir()
    args = ["export"] + [item for pair in base.items() for item in pair]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrank-jax export:") and message in err and "\n" not in err


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory):
    """Exports of steps 2 and 4 of one run (same shapes, other values)."""
    folder = tmp_path_factory.mktemp("exports")
    run = folder / "run"
    assert cli.main(["train", "--data", "synthetic:tests", "--out", str(run), *FAST[:-2], "--steps", "4",
                     "--no-aggregates", "--checkpoint-every", "2"]) == 0
    for step in (2, 4):
        assert cli.main(["export", "--checkpoint", str(run / "checkpoints"), "--step", str(step),
                         "--out", str(folder / f"step{step}")]) == 0
    return folder


def test_export_refuses_an_occupied_folder_and_replaces_it_whole(two_exports, tmp_path, capsys):
    import shutil

    target = tmp_path / "scorer"
    shutil.copytree(two_exports / "step2", target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    run = two_exports / "run" / "checkpoints"
    assert cli.main(["export", "--checkpoint", str(run), "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds files" in err and "--overwrite" in err and "\n" not in err
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # untouched
    assert cli.main(["export", "--checkpoint", str(run), "--out", str(target), "--overwrite"]) == 0
    assert (target / "params.npz").read_bytes() == (two_exports / "step4" / "params.npz").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scorer"]  # no partial or old folder left


def test_another_exports_params_are_refused(two_exports, tmp_path):
    import shutil

    from genrank_jax.errors import GenRankError
    from genrank_jax.serving.export import load_export

    swapped = tmp_path / "swapped"
    shutil.copytree(two_exports / "step4", swapped)
    shutil.copy(two_exports / "step2" / "params.npz", swapped / "params.npz")
    with pytest.raises(GenRankError, match="not this export's parameters"):
        load_export(swapped)
    # the bare artifact, called by hand with the wrong parameters, scores NaN, not plausibly wrong
    good = load_export(two_exports / "step4")
    foreign = load_export(two_exports / "step2").params
    dataset = load_dataset("synthetic:tests")
    builder = SampleBuilder(dataset, SampleLayout(max_history=16))
    requests = np.asarray(dataset.eval_requests)[:2]
    history, candidates = split_batch(builder.build(requests, int(builder.token_counts(requests).max())))
    history = {k: np.asarray(v) for k, v in vars(history).items() if v is not None}
    candidates = {k: np.asarray(v) for k, v in vars(candidates).items() if v is not None}
    cache = good.encode.call(good.params, history, candidates["num_candidates"])
    assert np.isfinite(np.asarray(good.score.call(good.params, cache, candidates))).all()
    assert np.isnan(np.asarray(good.score.call(foreign, cache, candidates))).all()


def test_the_artifacts_own_params_check_reads_a_sample_not_the_tables():
    """The score artifact checks its parameters on every call: that must not cost a pass over a
    catalog's embedding tables (2^20 x 64 float32 here, 256 MiB), and it must still see a change."""
    import jax

    from genrank_jax.serving.export import params_fingerprint

    table = jax.ShapeDtypeStruct((1 << 20, 64), np.float32)
    cost = jax.jit(params_fingerprint).lower([table, jax.ShapeDtypeStruct((7,), np.float32)]).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert cost["bytes accessed"] < (1 << 20)
    rng = np.random.default_rng(21)
    params = [rng.normal(size=(1000, 8)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)]
    trained = [p + rng.normal(scale=1e-2, size=p.shape).astype(np.float32) for p in params]  # every value moves
    assert not np.allclose(params_fingerprint(params), params_fingerprint(trained), rtol=1e-4, atol=1e-4)
