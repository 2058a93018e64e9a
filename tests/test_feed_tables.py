"""bench/feed_tables.py groups saved runs by setting and pairs models by seed (made-up AUCs, no training)."""

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "bench"))

from feed_tables import collect, phenomenon_table, setting, sparse_table  # noqa: E402


def run(command: str, model: str, aucs: list[float], items: int = 500) -> dict:
    header = {"command": command, "data": "synthetic:feed", "schedule": "stream", "device_kind": "cpu",
              "jax_version": "0"}
    config = json.dumps({"features": {"num_items": items}})
    return {"header": header, "rows": [{"model": model, "seed": seed, "eval": {"click": {"auc": auc}},
                                        "train_exposures": 300_000, "config": config}
                                       for seed, auc in enumerate(aucs)]}


def test_a_catalog_size_is_its_own_setting_not_a_phenomenon():
    assert setting({"command": "ablation.py --sim num_items=20000", "data": "synthetic:feed"}) == \
        "synthetic:feed, 20,000 items"
    assert setting({"command": "ablation.py --sim=fatigue=0.3 --sim=trend_strength=0", "data": "synthetic:feed"}) \
        == "synthetic:feed, only fatigue=0.3"


def test_the_sparse_table_pairs_each_ablation_with_genrank_by_seed():
    sparse = "ablation.py --sim=num_items=20000"
    groups, _, _ = collect([run(sparse, "genrank", [0.80, 0.81, 0.82], items=20_000),
                            run(sparse, "genrank-historyloss", [0.79, 0.81, 0.80], items=20_000),
                            run(sparse, "genrank-fullhistory", [0.80, 0.81], items=20_000),
                            run("ablation.py", "genrank", [0.7, 0.7]),
                            run("ablation.py --sim=fatigue=0.3", "genrank", [0.7])])
    (header, _, feed, row) = sparse_table(groups)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[0] == "synthetic:feed, 20,000 items" and cells[1] == "15"  # 300,000 exposures / 20,000 items
    assert cells[2].startswith("0.8100 ± 0.0100 (3)")
    assert cells[4] == "+0.0000 [+0.0000, +0.0000]"  # two seeds in common, equal AUCs
    assert cells[6].startswith("-0.0100 [")  # (-0.01, 0, -0.02): mean -0.01
    assert feed.startswith("| synthetic:feed | 600 | 0.7000")  # the preset itself, for comparison
    assert len(phenomenon_table(groups)) == 3  # the fatigue run alone is a phenomenon row


@pytest.mark.parametrize("runs", [[], [run("ablation.py --sim=fatigue=0.3", "genrank", [0.7])]])
def test_no_sparse_runs_say_so(runs):
    assert sparse_table(collect(runs)[0]) == ["Not run."]
