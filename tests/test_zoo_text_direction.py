"""PaddleOCR's text-direction classifier (``veriprint.zoo:text_direction``): the imported
graph against onnxruntime on the package's own preprocessing, its accuracy, and the whole
command line.

No text-line photos ship with the wheel, so the inputs here are SYNTHETIC: lines of words
rendered with Pillow's built-in font (deterministic, seeded), upright (class 0) and turned
by 180 degrees (class 1). Run this file as a script to print the measured numbers and draw
``docs/guide/zoo-text-direction.png``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from testkit.servers.required import missing
from testkit.signals import rendered_lines

INSTALL = ("rapidocr-onnxruntime is not installed: pip install --no-deps rapidocr-onnxruntime==1.4.4 "
           "(scripts/setup.sh does it)")


def _require() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        missing(INSTALL)
    from veriprint.zoo import TEXT_DIRECTION_FILE

    return Path(next(iter(spec.submodule_search_locations))) / TEXT_DIRECTION_FILE


def _as_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255


def _package_preprocessing(images: np.ndarray) -> np.ndarray:
    """What rapidocr's ``TextClassifier.resize_norm_img`` does to a 48x192 crop read by
    OpenCV: BGR channels, ``/ 255``, ``- 0.5``, ``/ 0.5``, channels first (no resize or
    padding is needed at this size)."""
    bgr = images[..., ::-1].astype(np.float32)
    return np.ascontiguousarray(((bgr / 255 - 0.5) / 0.5).transpose(0, 3, 1, 2))


def _onnxruntime(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]  # type: ignore[no-any-return]


def test_text_direction_is_the_package_model_through_the_importer() -> None:
    path = _require()
    from veriprint.data import InputDomain
    from veriprint.zoo import text_direction

    images, _ = rendered_lines(12, seed=1)
    model = text_direction()
    x = _as_input(images)
    assert InputDomain(0.0, 1.0, 255).on_grid(x)
    with torch.no_grad():
        z = model(x)
    probs = _onnxruntime(path, _package_preprocessing(images))  # the file as the package runs it
    assert z.shape == (24, 2) and probs.shape == (24, 2)
    np.testing.assert_allclose(torch.softmax(z, 1).numpy(), probs, atol=1e-5)
    assert torch.equal(z.argmax(1), torch.from_numpy(probs.argmax(1)))
    assert sum(p.numel() for p in model.parameters()) == 129_356
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 1  # the last layer, found by hooks
    xg = x[:2].clone().requires_grad_(True)
    model(xg).logsumexp(1).sum().backward()
    assert xg.grad is not None and float(xg.grad.abs().sum()) > 0


def test_text_direction_tells_upright_from_upside_down_lines() -> None:
    _require()
    from veriprint.zoo import text_direction

    images, labels = rendered_lines(50, seed=0)
    with torch.no_grad():
        pred = text_direction()(_as_input(images)).argmax(1).numpy()
    assert int((pred == labels).sum()) >= 90  # 94 of 100 measured


@pytest.mark.slow
def test_text_direction_through_fingerprint_and_verify(tmp_path: Path) -> None:
    _require()
    from veriprint.cli.main import main
    from veriprint.fingerprint import Fingerprint

    images, labels = rendered_lines(8, seed=2)
    data = tmp_path / "lines.npz"
    np.savez(data, x=np.ascontiguousarray(images.transpose(0, 3, 1, 2)), y=labels)  # uint8: the 8-bit grid
    fp_path = tmp_path / "text-direction.vpf"
    model = ["--model", "veriprint.zoo:text_direction"]
    assert main(["fingerprint", *model, "--data", str(data), "--out", str(fp_path), "--bag", "4", "--select", "2",
                 "--steps", "2", "--quiet"]) == 0
    fp = Fingerprint.load(fp_path)
    assert fp.expected.shape[1] == 2 and tuple(fp.samples.shape[1:]) == (3, 48, 192)
    assert fp.domain.levels == 255 and fp.domain.on_grid(fp.samples)
    assert main(["verify", str(fp_path), "--target", "veriprint.zoo:text_direction", "--spec", "top1"]) == 0


def _measure() -> None:  # pragma: no cover - run by hand: python tests/test_zoo_text_direction.py
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from veriprint.zoo import text_direction

    torch.set_num_threads(1)
    path = _require()
    images, labels = rendered_lines(50, seed=0)
    with torch.no_grad():
        z = text_direction()(_as_input(images))
    probs = _onnxruntime(path, _package_preprocessing(images))
    p180 = torch.softmax(z, 1)[:, 1].numpy()
    pred = z.argmax(1).numpy()
    print(f"accuracy on {len(labels)} synthetic lines: {int((pred == labels).sum())}/{len(labels)}")
    print(f"max |softmax - onnxruntime| = {np.abs(torch.softmax(z, 1).numpy() - probs).max():.2e}")
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [1.3, 1]})
    ax0.imshow(np.concatenate([images[0], images[50], images[1], images[51]]))
    ax0.set_title("synthetic lines: upright, turned 180 degrees")
    ax0.axis("off")
    ax1.hist([p180[labels == 0], p180[labels == 1]], bins=20, range=(0, 1), label=["upright", "turned 180"])
    ax1.set_xlabel("P(180) from veriprint.zoo:text_direction")
    ax1.set_ylabel("lines")
    ax1.legend()
    fig.tight_layout()
    out = Path(__file__).resolve().parents[1] / "docs" / "guide" / "zoo-text-direction.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    _measure()
