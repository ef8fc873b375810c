import json

import pytest

from fashionsearchnet.cli import main


@pytest.mark.slow
def test_demo_quick_runs_every_stage_and_reuses_them(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--no-serve", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for step in ("[1/6] synthetic catalog: drew 600", "[2/6] training", "[3/6] indexed", "[4/6] evaluated", "[5/6] example: fsn search", "[6/6] done"):
        assert step in text, step
    r = json.loads((out / "report" / "report.json").read_text())
    assert r["protocols"]["global"]["methods"]["fsn"]["queries"] > 0
    assert (out / "report" / "report.md").is_file() and (out / "model" / "model.safetensors").is_file()
    assert main(["demo", "--quick", "--no-serve", "--out", str(out)]) == 0
    again = capsys.readouterr().out
    assert "reusing" in again and "[2/6] model: reusing" in again
