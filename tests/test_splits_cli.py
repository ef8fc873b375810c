import subprocess
import sys
from collections import Counter

import numpy as np

from fashionsearchnet.cli import main
from fashionsearchnet.splits import stratified_splits


def test_splits_deterministic_and_proportional():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 5, size=(1000, 3))
    labels[:7, 0] = 9  # a rare value
    a = stratified_splits(labels, seed=1)
    assert a == stratified_splits(labels, seed=1)
    assert a != stratified_splits(labels, seed=2)
    c = Counter(a)
    assert abs(c["train"] - 700) <= 1 and abs(c["val"] - 100) <= 1 and abs(c["test"] - 200) <= 1
    rare = Counter(a[i] for i in range(7))
    assert rare["train"] >= 3 and rare["test"] >= 1  # the rare value reaches train and test


def test_splits_bad_fractions():
    import pytest

    with pytest.raises(ValueError, match="summing to 1"):
        stratified_splits(np.zeros((3, 1)), fractions=(0.5, 0.5, 0.5))


def test_help_does_not_import_torch():
    code = "import sys; from fashionsearchnet.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\nprint(sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_info_and_no_command(synth_small, capsys):
    assert main([]) == 0
    assert main(["info", str(synth_small), "--check-images"]) == 0
    out = capsys.readouterr().out
    assert "120 items" in out and "regions: sleeve (ROI of sleeve_length)" in out
