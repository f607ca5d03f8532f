"""The demo's shipped artefacts, its tampered copies and its verdict table.

Training is seeded but its float kernels differ between CPUs (instruction sets, thread
counts, oneDNN and MKL choices), and so does fingerprint generation: two machines that
train or generate with the same seeds end with different weights or samples. The demo
therefore ships a trained Fashion-MNIST CNN and a fingerprint made from it
(``veriprint/assets/demo``), each with its SHA-256 in a manifest that also records the
command and the machine that made them. On any machine the demo then verifies the same
samples against the same weights and tampered copies, and prints the same table.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veriprint.data import Dataset
from veriprint.fingerprint.meta import FingerprintMeta

__all__ = [
    "ASSETS",
    "README_BEGIN",
    "README_END",
    "Row",
    "Shipped",
    "cpu_model",
    "export_assets",
    "file_sha256",
    "load_shipped",
    "machine_description",
    "readme_block",
    "readme_block_of",
    "replace_readme_block",
    "tampered_copies",
    "verify_rows",
]

ASSETS = Path(__file__).parent / "assets" / "demo"
"""Where the shipped demo model and fingerprint live, with ``manifest.json``."""

MANIFEST = "manifest.json"
WEIGHTS_FILE = "fashion-cnn.safetensors"
FINGERPRINT_FILE = "fingerprint.vpf"

README_BEGIN = "<!-- demo table: written by `veriprint demo --write-readme README.md`; edit the demo, not this block -->"
README_END = "<!-- end of demo table -->"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says ("" if nothing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def machine_description() -> str:
    """This machine in one line: architecture, CPU model, cores, kernel level, threads, torch."""
    cpu = cpu_model()
    return (f"{platform.machine()} {cpu or 'CPU'}, {os.cpu_count()} cores, "
            f"{torch.backends.cpu.get_cpu_capability()} kernels, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


@dataclass(frozen=True)
class Shipped:
    """The shipped demo artefacts, checked against their manifest.

    Attributes:
        weights: the trained model's safetensors file.
        fingerprint: its fingerprint (``.vpf``).
        manifest: the manifest (hashes, data set, factory, training config, the command
            and machine that made them).
    """

    weights: Path
    fingerprint: Path
    manifest: dict[str, Any]

    @property
    def dataset(self) -> str:
        return str(self.manifest["dataset"])

    @property
    def factory(self) -> str:
        return str(self.manifest["factory"])


def load_shipped(root: str | os.PathLike[str] = ASSETS) -> Shipped:
    """Read the manifest in ``root`` and check both files' SHA-256 against it.

    Raises:
        ValueError: a file is missing or its hash is not the manifest's.
    """
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the demo manifest {root / MANIFEST}: {e}") from None
    paths = {}
    for key in ("weights", "fingerprint"):
        entry = manifest[key]
        path = root / entry["file"]
        if not path.is_file():
            raise ValueError(f"the shipped demo file {path} is missing")
        got = file_sha256(path)
        if got != entry["sha256"]:
            raise ValueError(f"{path}: SHA-256 {got[:16]}... is not the manifest's {entry['sha256'][:16]}...; "
                             "restore the file from git, or remake both with scripts/make-demo-assets.sh")
        paths[key] = path
    return Shipped(paths["weights"], paths["fingerprint"], manifest)


def export_assets(
    root: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str],
    fingerprint: str | os.PathLike[str],
    dataset: str,
    factory: str,
    train_config: dict[str, Any],
    test_accuracy: float,
    command: str,
) -> Path:
    """Copy a trained model and its fingerprint into ``root`` and write their manifest."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, root / WEIGHTS_FILE)
    shutil.copyfile(fingerprint, root / FINGERPRINT_FILE)
    manifest = {
        "dataset": dataset,
        "factory": factory,
        "train_config": train_config,
        "test_accuracy": round(test_accuracy, 6),
        "weights": {"file": WEIGHTS_FILE, "sha256": file_sha256(root / WEIGHTS_FILE)},
        "fingerprint": {"file": FINGERPRINT_FILE, "sha256": file_sha256(root / FINGERPRINT_FILE)},
        "command": command,
        "machine": machine_description(),
    }
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def tampered_copies(model: nn.Module, data: Dataset) -> list[tuple[str, nn.Module]]:
    """The intact model and tampered copies, every one an attack of the tampering registry.
    ``data``: labelled data for the registry's before/after measures."""
    from veriprint.tamper import (
        CastConfig,
        PruneConfig,
        QuantizeConfig,
        WeightEditConfig,
        WeightNoiseConfig,
        tamper,
    )

    def attack(config: object) -> nn.Module:
        return tamper(model, config, data=data, progress=False).model

    params = dict(model.named_parameters())
    last_w = [n for n in params if n.endswith("weight") and params[n].dim() == 2][-1]
    first_w = next(iter(params))

    def largest_x105(name: str) -> WeightEditConfig:
        return WeightEditConfig(layer=name, mode="scale", amount=0.05, select="largest")

    return [
        ("intact copy", copy.deepcopy(model)),
        ("float16 weights", attack(CastConfig(dtype="float16", buffers=False))),
        ("8-bit weights (per tensor)", attack(QuantizeConfig(bits=8, granularity="tensor", scope="all"))),
        ("2% magnitude pruning (per tensor)", attack(PruneConfig(amount=0.02, scope="layer"))),
        ("Gaussian weight noise, 1e-3 of each weight", attack(WeightNoiseConfig(relative=1e-3))),
        (f"largest weight of {last_w} (last layer) x1.05", attack(largest_x105(last_w))),
        (f"largest weight of {first_w} (first layer) x1.05", attack(largest_x105(first_w))),
    ]


@dataclass(frozen=True)
class Row:
    """One line of the demo table: a model and its verdicts through two APIs."""

    label: str
    tampered: bool
    top1: str
    flips: int
    probs: str
    diffs: int
    queries: int


def verify_rows(fingerprint: str | os.PathLike[str], model: nn.Module, data: Dataset) -> list[Row]:
    """Verify the intact model and every tampered copy through a top-1 and a probability API."""
    from veriprint.verification.verify import verify

    rows = []
    for i, (label, candidate) in enumerate(tampered_copies(model, data)):
        top1 = verify(fingerprint, candidate, spec="top1")
        probs = verify(fingerprint, candidate, spec="probs")
        rows.append(Row(label, i > 0, top1.verdict, top1.mismatches, probs.verdict, probs.mismatches, top1.queries))
    return rows


def _verdict(v: str, tampered: bool) -> str:
    if tampered and v == "INTACT":
        return "**INTACT (missed)**"
    if not tampered and v == "TAMPERED":
        return "**TAMPERED (false alarm)**"
    return v


def readme_block(rows: list[Row], *, accuracy: float, meta: FingerprintMeta, shipped: bool = True) -> str:
    """The demo's summary sentence and verdict table in Markdown, between the README's markers
    (``shipped``: the sentence names the shipped model and fingerprint, else this machine's)."""
    labels = meta.labels or ()
    what = ("the shipped model and its shipped fingerprint" if shipped
            else "a model and a fingerprint made on this machine")
    head = (f"`veriprint demo` on {what} ({accuracy:.1%} test accuracy): {len(labels)} queries "
            f"({meta.pairs} pairs across decision boundaries, covering "
            f"{len(set(labels))} classes), made from a bag of {meta.setting('bag')} seeds with "
            f"{meta.setting('generation', 'steps')} steps.")
    header = ("model served", "top-1 API", "labels flipped", "probabilities API", "outputs changed", "queries")
    body = [(r.label, _verdict(r.top1, r.tampered), f"{r.flips} / {r.queries}", _verdict(r.probs, r.tampered),
             f"{r.diffs} / {r.queries}", str(r.queries)) for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    table = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *[line(b) for b in body]]
    return "\n".join([README_BEGIN, head, "", *table, README_END])


def replace_readme_block(text: str, block: str) -> str:
    """``text`` with the part between the demo markers (markers included) replaced by ``block``."""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"expected the markers {README_BEGIN!r} and {README_END!r} in the README")
    return text[:begin] + block + text[end + len(README_END):]


def readme_block_of(text: str) -> str:
    """The demo block of a README's ``text`` (markers included)."""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"expected the markers {README_BEGIN!r} and {README_END!r} in the README")
    return text[begin : end + len(README_END)]
