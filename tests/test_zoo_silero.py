"""Silero VAD (``veriprint.zoo:silero_vad``): this project's module with the weights of the
wheel's TorchScript file, against that TorchScript model and the wheel's ONNX model under
onnxruntime, and the whole command line.

No recordings ship with the wheel, so the inputs here are SYNTHETIC and seeded: quiet
noise, tones, and chirps with overtones, 576 samples at 16 kHz (64 of context, then 512)
on the 16-bit PCM grid (``veriprint.zoo.PCM16``). They test agreement, not accuracy:
no speech data exists here to measure how well it detects speech.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from testkit.servers.required import missing
from testkit.signals import sounds

INSTALL = "silero-vad is not installed: pip install --no-deps silero-vad==6.2.3 (scripts/setup.sh does it)"


def _require() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        missing(INSTALL)
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def test_silero_vad_is_the_package_model() -> None:
    data = _require()
    import onnxruntime as ort

    from veriprint.zoo import PCM16, silero_vad

    model = silero_vad()
    x = sounds(12, seed=1)
    assert PCM16.on_grid(x)
    with torch.no_grad():
        z = model(x)
    assert z.shape == (12, 2) and torch.equal(z[:, 0], torch.zeros(12))
    p = torch.softmax(z, 1)[:, 1]
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the wheel ships it
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(data / "silero_vad.jit"), map_location="cpu").eval()
    with torch.no_grad():  # the package's TorchScript model, from a fresh state, on the same context
        p_script, _ = scripted._model(x, torch.zeros(2, 12, 128))
    torch.testing.assert_close(p, p_script.reshape(-1), rtol=0, atol=1e-6)
    with torch.no_grad():  # its streaming call: a fresh stream has 64 zeros of context
        scripted.reset_states()
        p_stream = scripted(x[:, 64:], 16_000)
        fresh = x.clone()
        fresh[:, :64] = 0
        p_fresh = torch.softmax(model(fresh), 1)[:, 1]
    torch.testing.assert_close(p_fresh, p_stream.reshape(-1), rtol=0, atol=1e-6)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(data / "silero_vad.onnx"), options, providers=["CPUExecutionProvider"])
    p_onnx, _ = session.run(None, {"input": x.numpy(), "state": np.zeros((2, 12, 128), np.float32),
                                   "sr": np.array(16_000, dtype=np.int64)})
    np.testing.assert_allclose(p.numpy(), p_onnx.reshape(-1), rtol=0, atol=1e-5)
    trained = sum(p.numel() for p in model.parameters()) - 129  # less the zero "no speech" row
    assert trained == sum(v.numel() for k, v in scripted._model.named_parameters()) == 243_585


def test_the_wheels_sequence_model_runs_through_the_onnx_importer() -> None:
    """``silero_vad_16k_sequence.onnx`` (Pad in reflect mode, a reversing Slice, LSTM) through
    this project's importer: equal to onnxruntime on a stream of frames, and on each frame
    alone from a zero state equal to :class:`veriprint.zoo.SileroVad`."""
    data = _require()
    import onnxruntime as ort

    from veriprint.models.onnx_import import import_onnx
    from veriprint.zoo import silero_vad

    path = data / "silero_vad_16k_sequence.onnx"
    graph = import_onnx(path)
    assert graph.input_names == ("input", "h", "c")
    x = sounds(6, seed=3)
    zero = torch.zeros(1, 1, 128)
    with torch.no_grad():
        p_stream, h, c = graph(x, zero, zero)  # the 6 frames as one stream: the state carries over
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": x.numpy(), "h": zero.numpy(), "c": zero.numpy()})
    for got, want in zip((p_stream, h, c), expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)
    with torch.no_grad():
        alone = torch.cat([graph(x[i:i + 1], zero, zero)[0].reshape(1) for i in range(6)])
        ours = torch.softmax(silero_vad()(x), 1)[:, 1]
    torch.testing.assert_close(ours, alone, rtol=0, atol=1e-6)
    assert not torch.allclose(alone[1:], p_stream[1:], atol=1e-3)  # later frames of a stream see the state
    lstm = [p for n, p in graph.named_parameters() if p.shape == (1, 512, 128)]
    assert len(lstm) == 2  # W and R of the LSTM are parameters: gradients reach them
    graph(x[:2], zero, zero)[0].sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in lstm)


def test_silero_vad_frames_and_weights_are_checked() -> None:
    from veriprint.errors import ModelError
    from veriprint.zoo import SileroVad

    with pytest.raises(ModelError, match=r"expected frames of 576 samples \(64 of context, then 512\), got \(2, 512\)"):
        SileroVad()(torch.zeros(2, 512))
    with pytest.raises(ValueError, match=r"unexpected key 'dense\.weight'"):
        SileroVad().load_silero({"dense.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"expected decoder\.decoder\.2\.weight"):
        SileroVad().load_silero({})


@pytest.mark.slow
def test_silero_vad_through_fingerprint_and_verify(tmp_path: Path) -> None:
    _require()
    from veriprint.cli.main import main
    from veriprint.fingerprint import Fingerprint
    from veriprint.zoo import PCM16

    data = tmp_path / "sounds.npz"
    np.savez(data, x=sounds(8, seed=2).numpy())
    fp_path = tmp_path / "vad.vpf"
    domain = ["--range", "-1", repr(32767 / 32768), "--levels", "65535"]  # PCM16
    assert main(["fingerprint", "--model", "veriprint.zoo:silero_vad", "--data", str(data), *domain, "--out",
                 str(fp_path), "--bag", "4", "--select", "2", "--steps", "2", "--quiet"]) == 0
    fp = Fingerprint.load(fp_path)
    assert fp.expected.shape[1] == 2 and tuple(fp.samples.shape[1:]) == (576,)
    assert fp.domain == PCM16 and fp.domain.on_grid(fp.samples)
    assert main(["verify", str(fp_path), "--target", "veriprint.zoo:silero_vad", "--spec", "top1"]) == 0


def _measure() -> None:  # pragma: no cover - run by hand: python tests/test_zoo_silero.py
    import onnxruntime as ort

    from veriprint.zoo import silero_vad

    torch.set_num_threads(1)
    data = _require()
    x = sounds(12, seed=1)
    with torch.no_grad():
        p = torch.softmax(silero_vad()(x), 1)[:, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(data / "silero_vad.jit"), map_location="cpu").eval()
    with torch.no_grad():
        p_script, _ = scripted._model(x, torch.zeros(2, 12, 128))
    session = ort.InferenceSession(str(data / "silero_vad.onnx"), providers=["CPUExecutionProvider"])
    p_onnx, _ = session.run(None, {"input": x.numpy(), "state": np.zeros((2, 12, 128), np.float32),
                                   "sr": np.array(16_000, dtype=np.int64)})
    print(f"12 synthetic frames: max |p - TorchScript| = {float((p - p_script.reshape(-1)).abs().max()):.1e}, "
          f"max |p - onnxruntime| = {float(np.abs(p.numpy() - p_onnx.reshape(-1)).max()):.1e}, "
          f"p from {float(p.min()):.3f} to {float(p.max()):.3f}")


if __name__ == "__main__":  # pragma: no cover
    _measure()
