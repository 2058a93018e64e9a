"""`bench/hopper_lowered.py` (the check that a change to the Hopper kernels left them as they were)
cannot rot unnoticed: it writes the three kernels and the StableHLO of a config, and lowering the
same checkout twice gives the same files, as a diff of two checkouts needs."""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import hopper_lowered  # noqa: E402

CONFIG = "d64_silu_lane"  # the quickest to lower


def test_lowering_the_same_checkout_twice_writes_the_same_files(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert hopper_lowered.main([str(first), CONFIG]) == 0
    assert hopper_lowered.main([str(second), CONFIG]) == 0
    names = sorted(path.name for path in first.iterdir())
    assert names == sorted(f"{CONFIG}.{part}" for part in
                           ("forward.mlir", "dq.mlir", "dkv.mlir", "hlo.txt"))
    for name in names:
        text = (first / name).read_text()
        assert text == (second / name).read_text(), name
        if name.endswith(".mlir"):
            assert "wgmma" in text and " loc(" not in text, name  # a Hopper kernel, no source lines
    assert "kernel_hash = _, module = _" in (first / f"{CONFIG}.hlo.txt").read_text()


def test_unknown_config_is_refused(tmp_path, capsys):
    assert hopper_lowered.main([str(tmp_path), "no_such_config"]) == 2
    assert "no_such_config" in capsys.readouterr().err
