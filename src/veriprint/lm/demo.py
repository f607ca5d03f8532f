"""The demo on a language model: the shipped ``fortunes-lm``, a fingerprint of it, and what
each tamper looks like through a completions API.

``veriprint demo --lm`` makes a small fingerprint of the shipped model on this machine (a
minute or two on 2 cores: :data:`DEMO_CONFIG`), then verifies the intact model and each
tampered copy through the local completions target (a chat target for the system prompt)
with ``top1-token`` (the greedy tokens a text API returns) and ``logprobs:5`` (the top-5
logprobs an OpenAI-style API returns), and prints one table. The same table with the
default fingerprint (32 prompts) is measured in ``docs/measurements/language-models.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from veriprint.lm.builder import LmFingerprintConfig, make_lm_fingerprint
from veriprint.lm.fingerprint import LmFingerprint
from veriprint.lm.model import LanguageModel, load_lm
from veriprint.lm.tamper import (
    LmCastConfig,
    LmFineTuneConfig,
    LmLoraConfig,
    LmQuantizeConfig,
    LmSiblingConfig,
    LmSystemPromptConfig,
    tamper_lm,
)
from veriprint.lm.target import LocalCompletions
from veriprint.lm.verify import verify_lm

__all__ = ["DEMO_CONFIG", "SPECS", "TAMPERS", "LmRow", "demo_fingerprint", "render", "verify_rows"]

#: The demo's fingerprint: half the default's prompts, the default's tokens per prompt.
DEMO_CONFIG = LmFingerprintConfig(prompts=16, max_tokens=4)

#: What the demo verifies with: greedy tokens, and the top-5 logprobs.
SPECS = ("top1-token", "logprobs:5")

#: The copies the demo serves instead of the owner's model.
TAMPERS: tuple[tuple[str, Any], ...] = (
    ("float16 (weights and compute)", LmCastConfig("float16")),
    ("bfloat16 (weights and compute)", LmCastConfig("bfloat16")),
    ("int8 weights, per channel", LmQuantizeConfig(8)),
    ("1 fine-tuning step, lr 1e-5", LmFineTuneConfig(1, 1e-5)),
    ("LoRA rank 4 merged, scale 1e-2", LmLoraConfig(4, 1e-2)),
    ("sibling checkpoint (3/4 of the steps)", LmSiblingConfig()),
    ("chat API with a system prompt", LmSystemPromptConfig()),
)


@dataclass(frozen=True)
class LmRow:
    """One served model's verdicts: per spec, the verdict and prompts that differed of those
    compared."""

    label: str
    tampered: bool
    verdicts: dict[str, tuple[str, int, int]]


def demo_fingerprint(lm: LanguageModel | None = None, config: LmFingerprintConfig = DEMO_CONFIG) -> LmFingerprint:
    """A fingerprint of the shipped ``fortunes-lm`` (or ``lm``) made on this machine."""
    return make_lm_fingerprint(lm or load_lm("fortunes-lm"), config, source="fortunes-lm")


def verify_rows(fp: LmFingerprint, lm: LanguageModel | None = None,
                progress: Callable[[str], None] | None = None) -> list[LmRow]:
    """The intact model's row, then each of :data:`TAMPERS`' rows."""
    lm = lm or load_lm("fortunes-lm")
    served: list[tuple[str, bool, LocalCompletions]] = [("intact model", False, LocalCompletions(lm))]
    for name, cfg in TAMPERS:
        res = tamper_lm(lm, cfg)
        served.append((name, True, LocalCompletions(res.lm, chat=res.system_prompt is not None,
                                                    system_prompt=res.system_prompt)))
    rows = []
    for label, tampered, target in served:
        if progress is not None:
            progress(label)
        verdicts: dict[str, tuple[str, int, int]] = {}
        for spec in SPECS:
            r = verify_lm(fp, target, spec=spec)
            verdicts[spec] = (r.verdict, r.mismatches, r.compared)
        rows.append(LmRow(label, tampered, verdicts))
    return rows


def _cell(verdict: str, tampered: bool) -> str:
    if tampered and verdict == "INTACT":
        return "**INTACT (missed)**"
    if not tampered and verdict == "TAMPERED":
        return "**TAMPERED (false alarm)**"
    return verdict


def render(rows: list[LmRow]) -> str:
    """The demo's table in Markdown."""
    header = ("model served", "greedy tokens (top1-token)", "prompts differing", "top-5 logprobs (logprobs:5)",
              "prompts differing")
    body = []
    for r in rows:
        cells = [r.label]
        for spec in SPECS:
            verdict, mismatches, compared = r.verdicts[spec]
            cells += [_cell(verdict, r.tampered), f"{mismatches} / {compared}"]
        body.append(tuple(cells))
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(header), sep, *(line(b) for b in body)])
