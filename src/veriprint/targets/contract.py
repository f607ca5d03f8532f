"""The output contract every target's answers are held to, in one place.

:func:`check_output` is the only check of what a target returned: the verifier applies it
to every answer of every target (local module, ONNX, callable, REST, gRPC, decoy
wrapper), and the remote targets apply it to each request's answer as it arrives, so that
an error names the request. An answer that fails it raises
:class:`~veriprint.targets.base.TargetError` (the verdict is then INCONCLUSIVE, never
INTACT and never TAMPERED: a malformed answer proves nothing about the weights).

The forms (``rows`` samples, ``classes`` classes when known):

* ``"logits"``: finite real numbers, shape ``(rows, classes)``;
* ``"probs"``: the same, each in [0, 1], each row summing to 1 (within 1e-3);
* ``"labels"``: integers in ``[0, classes)``, shape ``(rows,)`` or ``(rows, 1)``;
* ``"topk"``: integers in ``[0, classes)``, shape ``(rows, K)``, no label twice in a row;
* ``"top1-prob"``: shape ``(rows, 2)``: an integer label in ``[0, classes)``, then a
  probability in [0, 1].

Booleans, complex numbers, strings, ``None`` and ragged lists are refused in every form,
as are integer-valued forms given fractional numbers (a label 3.7 is not a label).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from veriprint.targets.base import OutputForm, TargetError

__all__ = ["PROB_SUM_TOLERANCE", "check_identity", "check_output", "pick_output", "to_array"]

#: How far a row of probabilities may sum from 1 (float32 softmax rounding is ~1e-7).
PROB_SUM_TOLERANCE = 1e-3
_KINDS = {"b": "booleans", "c": "complex numbers", "U": "strings", "S": "bytes",
          "O": "objects, None or mixed values", "M": "dates", "m": "time spans", "V": "records"}


def to_array(out: Any, where: str) -> np.ndarray:
    """``out`` (an array, a tensor, nested lists, decoded JSON) as a real-valued NumPy array.

    This is the one converter of answers: the local targets and every wire format's
    decoder use it before :func:`check_output`.

    Raises:
        TargetError: not convertible, ragged, empty and untyped, or not made of real numbers.
    """
    if hasattr(out, "detach") and hasattr(out, "cpu"):  # a torch tensor
        out = out.detach().cpu()
        if getattr(out, "is_complex", lambda: False)():
            raise TargetError(f"{where}: expected numbers, got a complex tensor; an answer must be numeric")
        out = out.numpy()
    if isinstance(out, list | tuple):
        odd = _odd_element(out)
        if odd is not None:
            raise TargetError(f"{where}: expected numbers, got {_KINDS[odd[0]]} among them (e.g. "
                              f"{odd[1]!r:.80}); an answer must be numeric")
    try:
        arr = np.asarray(out)
    except (ValueError, TypeError) as e:  # ragged lists, odd objects
        raise TargetError(f"{where}: expected a rectangular array of numbers, got ragged lists or "
                          f"{type(out).__name__} ({e})") from e
    if arr.dtype.kind not in "iuf":
        what = _KINDS.get(arr.dtype.kind, f"dtype {arr.dtype}")
        if not arr.size:
            raise TargetError(f"{where}: expected numbers, got an empty value")
        example = " ".join(repr(arr.flat[0]).split())[:80]
        raise TargetError(f"{where}: expected numbers, got {what} (e.g. {example}); an answer must be numeric")
    return arr


def _odd_element(values: list[Any] | tuple[Any, ...], depth: int = 0) -> tuple[str, Any] | None:
    """The first boolean or complex number inside nested lists (NumPy would turn a list mixing
    them with floats into floats: ``[True, 0.5]`` into ``[1.0, 0.5]``), as ``(kind, value)``."""
    if depth > 64:
        return None  # NumPy refuses deeper nesting itself
    for v in values:
        if isinstance(v, bool | np.bool_):
            return "b", v
        if isinstance(v, complex | np.complexfloating):
            return "c", v
        if isinstance(v, list | tuple):
            odd = _odd_element(v, depth + 1)
            if odd is not None:
                return odd
        elif isinstance(v, np.ndarray) and v.dtype.kind in "bc":
            return v.dtype.kind, v.flat[0] if v.size else v
    return None


def check_identity(where: str, *, model: str, version: str | None, request_id: str, name: str | None,
                   got_version: Any, got_id: Any) -> None:
    """An Open Inference Protocol answer is from the model, version and request asked for.

    ``name`` is the model the answer names (``None``: not said); a URL that names a version
    needs the answer to name that version (KServe's gRPC server ignores the version asked for
    and answers with its one model); a response id, when echoed, must be the request's.
    """
    if name is not None and name != model:
        raise TargetError(f"{where}: expected an answer from model {model!r}, got {name!r}")
    if version and str(got_version) != version:
        raise TargetError(f"{where}: expected an answer from version {version!r} of model "
                          f"{model!r}, got version {got_version!r}")
    if got_id not in (None, "", request_id):
        raise TargetError(f"{where}: expected response id {request_id!r}, got {got_id!r}")


def pick_output(names: list[Any], wanted: str | None, where: str) -> int:
    """Which of a server's named outputs is the answer: the one named ``wanted``, or the only
    one. Every protocol's decoder asks this, so an answer with two outputs of one name (one
    of them holding other values) is refused the same way everywhere.

    Raises:
        TargetError: no output, a repeated name, ``wanted`` missing, or several outputs and
            no ``wanted``.
    """
    if not names:
        raise TargetError(f"{where}: expected at least one output, got none")
    repeated = sorted({str(n) for n in names if names.count(n) > 1})
    if repeated:
        raise TargetError(f"{where}: expected outputs with distinct names, the server sent {names} "
                          f"({', '.join(repeated)} more than once)")
    if wanted is not None:
        if wanted not in names:
            raise TargetError(f"{where}: expected output {wanted!r}, server sent {names}")
        return names.index(wanted)
    if len(names) != 1:
        raise TargetError(f"{where}: the server sent {len(names)} outputs {names}; "
                          "name the one to use with output_name")
    return 0


def _integers(arr: np.ndarray, what: str, where: str) -> np.ndarray:
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all() or not np.all(arr == np.round(arr)):
            bad = arr[~finite | (arr != np.round(np.where(finite, arr, 0)))]
            raise TargetError(f"{where}: expected integer {what}, got non-integer values "
                              f"(e.g. {float(bad.flat[0])!r})")
        huge = np.abs(arr) >= 2.0**53  # beyond exact integers in float64 (and near int64's end)
        if huge.any():
            raise TargetError(f"{where}: expected integer {what}, got values too large to be one "
                              f"(e.g. {float(arr[huge].flat[0])!r})")
    return arr.astype(np.int64)


def _in_range(labels: np.ndarray, classes: int | None, what: str, where: str) -> None:
    if not labels.size:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or (classes is not None and hi >= classes):
        top = f"[0, {classes - 1}]" if classes is not None else ">= 0"
        model = f"; a {classes}-class model has labels in {top}" if classes is not None else ""
        raise TargetError(f"{where}: expected {what} in {top}, got values in [{lo}, {hi}]{model}")


def check_output(out: Any, *, form: OutputForm, rows: int, classes: int | None = None,
                 where: str = "target", keep_precision: bool = False) -> np.ndarray:
    """Validate one answer and return it in the :class:`~veriprint.targets.base.Target` form.

    Args:
        out: what the target returned for ``rows`` samples (array, tensor or lists).
        form: what it should be (see the module's docs).
        rows: how many samples were sent.
        classes: the model's number of classes, when known (checked for every form).
        where: named in error messages.
        keep_precision: return float64 answers as float64 (default False: float32).

    Returns:
        float32 ``(rows, classes)`` for logits/probs, float32 ``(rows, 2)`` for top1-prob,
        int64 ``(rows,)`` for labels, int64 ``(rows, K)`` for topk. With
        ``keep_precision``, a float64 answer stays float64.

    Raises:
        TargetError: wrong count, shape or kind of values; non-finite, fractional,
            repeated or out-of-range values; probabilities that do not sum to 1.
    """
    arr = to_array(out, where)
    if arr.ndim == 0 or arr.shape[0] != rows:
        got = "a scalar" if arr.ndim == 0 else f"{arr.shape[0]} (shape {list(arr.shape)})"
        raise TargetError(f"{where}: expected outputs for {rows} samples, got {got}")
    if form in ("logits", "probs"):
        if arr.ndim != 2:
            raise TargetError(f"{where}: expected {form} of shape [{rows}, classes], got {list(arr.shape)}")
        if arr.shape[1] < 1:
            raise TargetError(f"{where}: expected {form} for at least one class, got shape {list(arr.shape)}")
        if classes is not None and arr.shape[1] != classes:
            raise TargetError(f"{where}: expected {classes} classes, got {arr.shape[1]} "
                              f"(shape {list(arr.shape)})")
        bad = ~np.isfinite(arr)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise TargetError(f"{where}: expected finite {form}, got {arr[r, c]} at sample {r}, "
                              f"class {c} ({int(bad.sum())} NaN or infinite values)")
        if form == "probs":
            p = arr.astype(np.float64)
            if p.min() < -1e-6 or p.max() > 1 + 1e-6:
                raise TargetError(f"{where}: expected probabilities in [0, 1], got values in "
                                  f"[{p.min():g}, {p.max():g}]")
            sums = p.sum(axis=1)
            worst = int(np.argmax(np.abs(sums - 1)))
            if abs(sums[worst] - 1) > PROB_SUM_TOLERANCE:
                raise TargetError(f"{where}: expected probabilities summing to 1 per sample, "
                                  f"sample {worst} sums to {sums[worst]:.6g}")
        with np.errstate(over="ignore"):
            out32: np.ndarray = arr.astype(np.float32)
        if not np.isfinite(out32).all():
            raise TargetError(f"{where}: expected {form} within float32 range, got values up to "
                              f"{np.abs(arr).max():g}")
        if keep_precision and arr.dtype == np.float64:
            return arr
        return out32
    if form == "top1-prob":
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise TargetError(f"{where}: expected (label, probability) pairs of shape [{rows}, 2], "
                              f"got {list(arr.shape)}")
        labels = _integers(arr[:, 0], "class indices in column 0", where)
        _in_range(labels, classes, "class indices in column 0", where)
        probs = arr[:, 1].astype(np.float64)
        if not np.isfinite(probs).all() or (probs.size and (probs.min() < -1e-6 or probs.max() > 1 + 1e-6)):
            raise TargetError(f"{where}: expected probabilities in [0, 1] in column 1, got values in "
                              f"[{np.nanmin(probs):g}, {np.nanmax(probs):g}]")
        return np.stack([labels.astype(np.float32), probs.astype(np.float32)], axis=1)
    if form not in ("labels", "topk"):
        raise TargetError(f"{where}: unknown output form {form!r}")
    labels = _integers(arr, form, where)
    if form == "labels":
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise TargetError(f"{where}: expected labels of shape [{rows}], got {list(arr.shape)}")
        _in_range(labels, classes, "class indices", where)
        return labels
    if labels.ndim != 2 or labels.shape[1] < 1:
        raise TargetError(f"{where}: expected top-k labels of shape [{rows}, K], got {list(arr.shape)}")
    _in_range(labels, classes, "class indices", where)
    if classes is not None and labels.shape[1] > classes:
        raise TargetError(f"{where}: expected at most {classes} labels per sample, got {labels.shape[1]}")
    srt = np.sort(labels, axis=1)
    dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
    if dup.any():
        i = int(np.argmax(dup))
        raise TargetError(f"{where}: expected distinct top-k labels per sample, sample {i} "
                          f"repeats one: {labels[i].tolist()}")
    return labels
