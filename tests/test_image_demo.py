"""`python -m rsm demo images` end to end at toy sizes (the MLP backbone; the DiT backbone when
rsm.DiT exists, else the clear error that says how to run without it)."""
import os

import pytest

import rsm
from rsm.__main__ import main

pytest.importorskip("sklearn")
pytest.importorskip("PIL")

TINY = ["--steps", "40", "--batch-size", "64", "--classifier-steps", "40", "--finetune-steps", "1",
        "--eval-per-class", "2", "--group-size", "2", "--sample-steps", "4",
        "--guidance-scales", "0", "2", "--quiet"]


@pytest.mark.slow  # end to end with plots: ~5 s; its C paths are covered by the fast tests
def test_image_demo_mlp_backbone(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "images", "--backbone", "mlp", "--width", "32", "--depth", "1",
                 "--out", str(out)] + TINY) == 0
    text = capsys.readouterr().out
    for label in ("pretrained (w = 1)", "flow-grpo", "rsm-fo", "KL to ref"):
        assert label in text
    table = (out / "table.md").read_text().splitlines()
    assert len(table) == 5                                   # header, rule, 3 models
    values = [float(v) for v in table[2].split("|")[2:6]]   # p, log p, accuracy, JPEG kB
    assert 0 <= values[0] <= 1 and values[1] <= 0 and 0 <= values[2] <= 1 and values[3] > 0
    assert os.path.exists(out / "digits_mlp.safetensors")
    pytest.importorskip("matplotlib")
    assert os.path.getsize(out / "samples_pretrained.png") > 0 and os.path.getsize(out / "finetune.png") > 0
    assert os.path.getsize(out / "finetune_curves.png") > 0


def test_image_demo_dit_backbone(tmp_path):
    args = ["demo", "images", "--width", "16", "--depth", "1", "--heads", "2", "--out",
            str(tmp_path / "dit")] + TINY
    if getattr(rsm, "DiT", None) is None:
        with pytest.raises(RuntimeError, match="rsm.DiT.*--backbone mlp"):
            main(args)
    else:
        assert main(args) == 0
        assert os.path.exists(tmp_path / "dit" / "table.md")
