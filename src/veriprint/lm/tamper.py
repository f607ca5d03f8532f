"""Tampering with a language model: what a vendor might serve instead of the owner's weights.

The same registry style as :mod:`veriprint.tamper`: a frozen config per attack, a function
registered for it, and :func:`tamper_lm` that runs it on a copy (the caller's model is never
touched) and reports how many weights changed. Attacks:

* ``lm-cast``: weights cast to float16 or bfloat16 and the model run in that precision,
  its logits compared back in float32 (a cheaper serving precision);
* ``lm-quantize``: int8 symmetric weight quantization per output channel (``bits`` settable);
* ``lm-torchao``: torchao's own quantization of the linear layers, int8 weight-only, int4
  weight-only per group, or int8 dynamic activations with int4 weights per group, run
  through torchao's kernels (the optional ``torchao`` extra);
* ``lm-finetune``: one (or ``steps``) fine-tuning step of AdamW at a small learning rate on
  natural text;
* ``lm-lora``: a rank-``rank`` LoRA merged into the attention projections at a small scale;
* ``lm-sibling``: another checkpoint of the same recipe (the shipped ``fortunes-lm-sibling``:
  the same run stopped at 3/4 of its steps, or any model folder);
* ``lm-system-prompt``: the weights untouched, but a chat API that puts a system prompt (or
  another chat template) before the user's message.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

import torch

from veriprint.lm.model import LanguageModel, dense, load_lm, weights_sha256

__all__ = ["LmCastConfig", "LmFineTuneConfig", "LmLoraConfig", "LmQuantizeConfig", "LmSiblingConfig",
           "LmSystemPromptConfig", "LmTamperResult", "LmTorchaoConfig", "list_lm_attacks", "lm_attack", "tamper_lm"]

C = TypeVar("C")


@dataclass(frozen=True)
class LmTamperResult:
    """A tampered LM and how it differs.

    Attributes:
        lm: the tampered model (a new object).
        attack: the registered name.
        config: the config as a dict.
        changed: scalar weights that differ from the intact model's (0 for a serving change).
        total: scalar weights compared.
        max_abs_change: largest absolute weight change.
        dtype: the precision the model runs in (``"float32"`` unless cast).
        system_prompt: the system message a chat API adds (``None``: none).
        chat_template: the chat template a chat API uses instead (``None``: the tokenizer's).
    """

    lm: LanguageModel
    attack: str
    config: dict[str, Any]
    changed: int
    total: int
    max_abs_change: float
    dtype: str = "float32"
    system_prompt: str | None = None
    chat_template: str | None = None


@dataclass(frozen=True)
class _Outcome:
    lm: LanguageModel
    dtype: str = "float32"
    system_prompt: str | None = None
    chat_template: str | None = None


_REGISTRY: dict[str, tuple[type, Callable[[LanguageModel, Any], _Outcome], str]] = {}


def _register(config_type: type[C], name: str, summary: str) -> Callable[[Callable[[LanguageModel, C], _Outcome]],
                                                                         Callable[[LanguageModel, C], _Outcome]]:
    def deco(fn: Callable[[LanguageModel, C], _Outcome]) -> Callable[[LanguageModel, C], _Outcome]:
        if name in _REGISTRY:
            raise ValueError(f"LM attack {name!r} is already registered")
        _REGISTRY[name] = (config_type, fn, summary)
        return fn

    return deco


def list_lm_attacks() -> list[tuple[str, str, dict[str, Any]]]:
    """Every LM attack: name, summary and default config."""
    return [(name, summary, asdict(cls())) for name, (cls, _, summary) in sorted(_REGISTRY.items())]


def lm_attack(name: str, **settings: Any) -> Any:
    """The config of the attack ``name`` with ``settings`` (a CLI name to a config)."""
    if name not in _REGISTRY:
        raise ValueError(f"expected an LM attack among {sorted(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name][0](**settings)


def _need(ok: bool, what: str, value: object) -> None:
    if not ok:
        raise ValueError(f"expected {what}, got {value!r}")


def _copy(lm: LanguageModel, model: Any) -> LanguageModel:
    model.eval()
    return LanguageModel(model, lm.tokenizer, lm.source, weights_sha256(model), lm.tokenizer_sha256)


@dataclass(frozen=True)
class LmCastConfig:
    """Run the model in a 16-bit format (``"float16"``, default, or ``"bfloat16"``)."""

    dtype: Literal["float16", "bfloat16"] = "float16"

    def __post_init__(self) -> None:
        _need(self.dtype in ("float16", "bfloat16"), "dtype float16 or bfloat16", self.dtype)


@_register(LmCastConfig, "lm-cast", "serve in float16/bfloat16 (weights and compute), logits read back in float32")
def _cast(lm: LanguageModel, cfg: LmCastConfig) -> _Outcome:
    model = copy.deepcopy(lm.model).to(getattr(torch, cfg.dtype))
    return _Outcome(_copy(lm, model), dtype=cfg.dtype)


@dataclass(frozen=True)
class LmQuantizeConfig:
    """Symmetric weight quantization of every matrix (embeddings included) to ``bits`` bits
    (default 8), per output channel (default) or per tensor."""

    bits: int = 8
    granularity: Literal["channel", "tensor"] = "channel"

    def __post_init__(self) -> None:
        _need(isinstance(self.bits, int) and 2 <= self.bits <= 16, "2 <= bits <= 16", self.bits)
        _need(self.granularity in ("channel", "tensor"), "granularity channel or tensor", self.granularity)


@_register(LmQuantizeConfig, "lm-quantize", "int8 (b-bit) symmetric weight quantization, per output channel")
def _quantize(lm: LanguageModel, cfg: LmQuantizeConfig) -> _Outcome:
    from veriprint.tamper.precision import quantize_tensor

    model = copy.deepcopy(lm.model)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(quantize_tensor(p, cfg.bits, cfg.granularity == "channel"))
    return _Outcome(_copy(lm, model))


TORCHAO_SCHEMES = ("int8-weight", "int4-weight", "int8-dynamic-int4-weight")


@dataclass(frozen=True)
class LmTorchaoConfig:
    """torchao's quantization (``torchao.quantization.quantize_``) of every linear layer, the
    output head included (the tied input embedding then stays float32, as torchao leaves
    embeddings alone): ``scheme`` ``"int8-weight"`` (``Int8WeightOnlyConfig``, per output
    channel), ``"int4-weight"`` (default; ``IntxWeightOnlyConfig`` with ``torch.int4``,
    symmetric, one scale per ``group_size`` weights of a row) or ``"int8-dynamic-int4-weight"``
    (``Int8DynamicActivationIntxWeightConfig``: those int4 weights, and activations quantized
    to int8 per token at run time). ``group_size`` (default 32) must divide every layer's
    input width (96 and 288 for ``fortunes-lm``: 32 does, 64 does not).

    torchao's ``Int4WeightOnlyConfig`` does not run on a CPU (its packing formats need the
    ``mslk`` kernels, CUDA or another accelerator); its ``Intx`` configurations are the ones
    torchao runs on a CPU.
    """

    scheme: Literal["int8-weight", "int4-weight", "int8-dynamic-int4-weight"] = "int4-weight"
    group_size: int = 32

    def __post_init__(self) -> None:
        _need(self.scheme in TORCHAO_SCHEMES, f"scheme among {TORCHAO_SCHEMES}", self.scheme)
        _need(isinstance(self.group_size, int) and not isinstance(self.group_size, bool) and self.group_size >= 1,
              "group_size >= 1", self.group_size)


def _import_torchao() -> Any:
    """``torchao.quantization``, without the warnings its import logs about its CUDA-only libraries."""
    log = logging.getLogger("torchao")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torchao.quantization as tq
    except ImportError as e:
        raise ImportError("lm-torchao needs torchao: pip install 'veriprint[torchao]'") from e
    finally:
        log.setLevel(level)
    return tq


@_register(LmTorchaoConfig, "lm-torchao", "torchao's int8 / int4 (grouped) quantization of the linear layers, "
           "run by torchao")
def _torchao(lm: LanguageModel, cfg: LmTorchaoConfig) -> _Outcome:
    tq = _import_torchao()
    from torchao.quantization.granularity import PerGroup

    model = copy.deepcopy(lm.model)
    if cfg.scheme == "int8-weight":
        config: Any = tq.Int8WeightOnlyConfig()
    else:
        widths = sorted({m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)})
        bad = [w for w in widths if w % cfg.group_size]
        if bad:
            raise ValueError(f"expected a group_size that divides every linear layer's input width {widths}, "
                             f"got {cfg.group_size}")
        int4 = getattr(torch, "int4")  # noqa: B009 (not in torch's type stubs)
        if cfg.scheme == "int4-weight":
            config = tq.IntxWeightOnlyConfig(weight_dtype=int4, granularity=PerGroup(cfg.group_size))
        else:
            config = tq.Int8DynamicActivationIntxWeightConfig(weight_dtype=int4,
                                                              weight_granularity=PerGroup(cfg.group_size))
    with torch.no_grad():
        tq.quantize_(model, config)
    return _Outcome(_copy(lm, model))


@dataclass(frozen=True)
class LmFineTuneConfig:
    """``steps`` AdamW steps (default 1) at learning rate ``lr`` (default 1e-5) on natural text
    (default: the shipped seeds), ``batch`` texts per step (default 8), seeded (default 0)."""

    steps: int = 1
    lr: float = 1e-5
    batch: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        _need(isinstance(self.steps, int) and self.steps >= 1, "steps >= 1", self.steps)
        _need(self.lr > 0, "lr > 0", self.lr)
        _need(isinstance(self.batch, int) and self.batch >= 1, "batch >= 1", self.batch)


@_register(LmFineTuneConfig, "lm-finetune", "fine-tuning steps at a small learning rate on natural text")
def _finetune(lm: LanguageModel, cfg: LmFineTuneConfig) -> _Outcome:
    from veriprint.lm.builder import shipped_seeds
    from veriprint.lm.model import pad_left

    texts = shipped_seeds()
    g = torch.Generator().manual_seed(cfg.seed)
    model = copy.deepcopy(lm.model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    pad = int(lm.tokenizer.pad_token_id or 0)
    for _ in range(cfg.steps):
        pick = torch.randperm(len(texts), generator=g)[: cfg.batch].tolist()
        seqs = [lm.encode(texts[i])[:32] or [pad] for i in pick]
        ids, mask = pad_left(seqs, pad)
        labels = ids.masked_fill(mask == 0, -100)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        loss = model(input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return _Outcome(_copy(lm, model))


@dataclass(frozen=True)
class LmLoraConfig:
    """A random rank-``rank`` (default 4) update ``B A`` merged into every attention
    projection (``q/k/v/o_proj``), scaled so that its norm is ``scale`` (default 0.01) times
    the weight's, seeded (default 0): a LoRA merged at small scale."""

    rank: int = 4
    scale: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        _need(isinstance(self.rank, int) and self.rank >= 1, "rank >= 1", self.rank)
        _need(self.scale > 0, "scale > 0", self.scale)


@_register(LmLoraConfig, "lm-lora", "a low-rank (LoRA) update merged into the attention projections at small scale")
def _lora(lm: LanguageModel, cfg: LmLoraConfig) -> _Outcome:
    model = copy.deepcopy(lm.model)
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() == 2 and name.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj", "o_proj"):
                a = torch.randn(cfg.rank, p.shape[1], generator=g)
                b = torch.randn(p.shape[0], cfg.rank, generator=g)
                delta = b @ a
                p.add_(delta * (cfg.scale * p.norm() / delta.norm().clamp_min(1e-12)))
    return _Outcome(_copy(lm, model))


@dataclass(frozen=True)
class LmSiblingConfig:
    """Serve another checkpoint of the same recipe: a zoo name or a model folder
    (default ``"fortunes-lm-sibling"``, the same run stopped at 3/4 of its steps)."""

    source: str = "fortunes-lm-sibling"


@_register(LmSiblingConfig, "lm-sibling", "another checkpoint of the same recipe (another seed or fewer steps)")
def _sibling(lm: LanguageModel, cfg: LmSiblingConfig) -> _Outcome:
    other = load_lm(cfg.source)
    if other.vocab_size != lm.vocab_size:
        raise ValueError(f"expected a sibling with the same {lm.vocab_size}-token vocabulary, got {other.vocab_size}")
    return _Outcome(other)


@dataclass(frozen=True)
class LmSystemPromptConfig:
    """A chat API that adds a system message (default ``"You are a helpful assistant."``)
    or uses another chat template (default: the tokenizer's); the weights are untouched."""

    system_prompt: str = "You are a helpful assistant."
    chat_template: str | None = None


@_register(LmSystemPromptConfig, "lm-system-prompt", "a chat API adding a system prompt or another chat template")
def _system_prompt(lm: LanguageModel, cfg: LmSystemPromptConfig) -> _Outcome:
    return _Outcome(lm, system_prompt=cfg.system_prompt or None, chat_template=cfg.chat_template)


def tamper_lm(lm: LanguageModel, config: object) -> LmTamperResult:
    """Run the attack registered for ``config`` on a copy of ``lm``.

    Raises:
        ValueError: ``config`` is no registered LM attack's config.
    """
    for name, (cls, fn, _) in _REGISTRY.items():
        if type(config) is cls:
            out = fn(lm, config)
            changed, total, mx = _weight_change(lm.model, out.lm.model)
            return LmTamperResult(out.lm, name, asdict(config), changed, total, mx,  # type: ignore[call-overload]
                                  out.dtype, out.system_prompt, out.chat_template)
    raise ValueError(f"expected a registered LM attack config, got {type(config).__name__}")


def _weight_change(a: Any, b: Any) -> tuple[int, int, float]:
    sa, sb = a.state_dict(), b.state_dict()
    changed = total = 0
    mx = 0.0
    for k, t in sa.items():
        other = dense(sb[k]) if k in sb else None
        if other is None or other.shape != t.shape or not t.is_floating_point():
            continue
        d = other.double() - dense(t).double()
        changed += int((d != 0).sum())
        total += d.numel()
        mx = max(mx, float(d.abs().max()) if d.numel() else 0.0)
    return changed, total, mx if math.isfinite(mx) else float("inf")
