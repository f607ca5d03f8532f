"""A fingerprint's metadata, typed and versioned.

The file stores its metadata as one JSON object (:mod:`veriprint.fingerprint.fileformat`);
:class:`FingerprintMeta` is how the code reads it. :meth:`FingerprintMeta.from_dict` is the
one place that decides what an entry must be: the three entries every verdict needs
(``noise`` is read by :class:`~veriprint.noise.NoiseFloor`; ``domain`` and
``model_outputs``), and, when present, each entry a reader relies on, with its type. A
file is refused on load, never later when ``inspect``, a selector or the monitor reads an
entry.

The schema has a version (``meta_version``; files written before it existed are version 1,
which is what they hold). A file whose version is newer than :data:`META_VERSION` was
written by a newer veriprint and is refused with that said, rather than read as if its
entries meant what they mean here. Entries this version does not know are kept in
:attr:`FingerprintMeta.extra` and written back unchanged.

Writers (the pipeline's stages, enrollment, fresh checks) still build the JSON object as a
dict: it is what goes into the file, and its key order is what the file's hash covers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from veriprint.data import InputDomain

__all__ = ["META_VERSION", "FingerprintMeta", "MetaError", "ReachInfo", "SelectionInfo", "SubsetInfo"]

#: The version of the metadata schema this code writes and the newest it reads.
META_VERSION = 1

OutputKind = Literal["logits", "probs"]


class MetaError(ValueError):
    """An entry of the metadata that no veriprint of this version could have written."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _ints(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(x) for x in v)


def _nums(v: Any) -> bool:
    return isinstance(v, list) and all(_is_num(x) for x in v)


def _want(ok: bool, what: str, expected: str, got: Any) -> None:
    if not ok:
        shown = type(got).__name__ if isinstance(got, dict | list) else repr(got)
        raise MetaError(f"expected {what} to be {expected}, got {shown:.80}")


@dataclass(frozen=True)
class SelectionInfo:
    """How the samples were chosen (``meta["selection"]``).

    Attributes:
        method: the selector's name (``reach``, ``manc``, ...), or None if not recorded.
        pairs: how many twin pairs the samples start with (samples ``2i`` and ``2i + 1``).
        eligible: how many candidates of the bag were eligible.
        coverage: the selector's coverage trace, one value per sample chosen.
        raw: the whole entry as stored.
    """

    method: str | None
    pairs: int
    eligible: int | None
    coverage: tuple[float, ...]
    raw: Mapping[str, Any]

    @classmethod
    def from_dict(cls, d: Any) -> SelectionInfo:
        _want(isinstance(d, dict), "selection", "an object", d)
        method, pairs, eligible, cov = d.get("method"), d.get("pairs", 0), d.get("eligible"), d.get("coverage", [])
        _want(method is None or isinstance(method, str), "selection.method", "a string", method)
        _want(_is_int(pairs) and pairs >= 0, "selection.pairs", "a count", pairs)
        _want(eligible is None or _is_int(eligible), "selection.eligible", "a count", eligible)
        _want(_nums(cov), "selection.coverage", "a list of numbers", cov)
        return cls(method, int(pairs), eligible, tuple(float(c) for c in cov), d)


@dataclass(frozen=True)
class ReachInfo:
    """Which parameter changes the samples reveal, per tensor (``meta["reach"]``).

    Attributes:
        deltas: the relative changes measured (e.g. ``(0.05, 0.01)``).
        overall: per delta, the share of all scalar parameters revealed.
        tensors: the tensors' names, in the model's order.
        sizes: each tensor's number of scalars.
        share: per delta, per tensor, the share of its scalars revealed.
        first_order: whether reach is the first-order estimate.
    """

    deltas: tuple[float, ...]
    overall: tuple[float, ...]
    tensors: tuple[str, ...]
    sizes: tuple[int, ...]
    share: tuple[tuple[float, ...], ...]
    first_order: bool

    @classmethod
    def from_dict(cls, d: Any) -> ReachInfo:
        _want(isinstance(d, dict), "reach", "an object", d)
        deltas, overall = d.get("deltas", []), d.get("all", [])
        tensors, sizes, share = d.get("tensors", []), d.get("sizes", []), d.get("share", [])
        _want(_nums(deltas), "reach.deltas", "a list of numbers", deltas)
        _want(_nums(overall) and len(overall) == len(deltas), "reach.all", f"{len(deltas)} numbers", overall)
        _want(isinstance(tensors, list) and all(isinstance(t, str) for t in tensors), "reach.tensors",
              "a list of names", tensors)
        _want(_ints(sizes) and len(sizes) == len(tensors), "reach.sizes", f"{len(tensors)} counts", sizes)
        _want(isinstance(share, list) and len(share) == len(deltas)
              and all(_nums(s) and len(s) == len(tensors) for s in share),
              "reach.share", f"{len(deltas)} lists of {len(tensors)} numbers", share)
        return cls(tuple(float(x) for x in deltas), tuple(float(x) for x in overall), tuple(tensors),
                   tuple(int(s) for s in sizes), tuple(tuple(float(x) for x in s) for s in share),
                   bool(d.get("first_order", False)))


@dataclass(frozen=True)
class SubsetInfo:
    """Where a subset came from (``meta["subset_of"]``): the file's hash, its size, the
    positions kept."""

    sha256: str
    size: int
    indices: tuple[int, ...]

    @classmethod
    def from_dict(cls, d: Any) -> SubsetInfo:
        _want(isinstance(d, dict), "subset_of", "an object", d)
        sha, size, idx = d.get("sha256"), d.get("size"), d.get("indices")
        _want(isinstance(sha, str), "subset_of.sha256", "a string", sha)
        _want(_is_int(size), "subset_of.size", "a count", size)
        _want(_ints(idx), "subset_of.indices", "a list of positions", idx)
        return cls(str(sha), int(size), tuple(idx))


#: Entries read as JSON objects, checked as such, kept as mappings.
_OBJECTS = ("config", "profile", "generation", "fresh", "data", "plan", "stages", "straddle", "budget",
            "enrollment")
#: Entries read as strings.
_STRINGS = ("tool", "tool_version", "created", "model_hash", "model_source")
#: Every entry this version knows (the rest go to ``extra``).
_KNOWN = {"meta_version", "kind", "noise", "domain", "model_outputs", "input_shape", "num_classes", "labels",
          "seconds", "selection", "reach", "subset_of", *_OBJECTS, *_STRINGS}


@dataclass(frozen=True)
class FingerprintMeta:
    """A classifier fingerprint's metadata, typed (see the module's docstring).

    Attributes:
        version: the schema's version (``meta_version``; 1 when the file predates it).
        model_outputs: what the model returns, ``"logits"`` or ``"probs"``.
        domain: the input domain the samples lie in.
        tool, tool_version, created, model_hash, model_source: who made it, when, from what.
        input_shape: one sample's shape.
        num_classes: the number of outputs.
        labels: each sample's label under the intact model, in query order.
        seconds: how long the making took.
        selection, reach, subset_of: typed, when recorded.
        config, profile, generation, fresh, data, plan, stages, straddle, budget, enrollment:
            the stages' records, as stored (each a JSON object), when present.
        extra: entries this version does not know, as stored.
    """

    version: int
    model_outputs: OutputKind
    domain: InputDomain
    tool: str | None = None
    tool_version: str | None = None
    created: str | None = None
    model_hash: str | None = None
    model_source: str | None = None
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    labels: tuple[int, ...] | None = None
    seconds: float | None = None
    selection: SelectionInfo | None = None
    reach: ReachInfo | None = None
    subset_of: SubsetInfo | None = None
    config: Mapping[str, Any] | None = None
    profile: Mapping[str, Any] | None = None
    generation: Mapping[str, Any] | None = None
    fresh: Mapping[str, Any] | None = None
    data: Mapping[str, Any] | None = None
    plan: Mapping[str, Any] | None = None
    stages: Mapping[str, Any] | None = None
    straddle: Mapping[str, Any] | None = None
    budget: Mapping[str, Any] | None = None
    enrollment: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def pairs(self) -> int:
        """How many twin pairs the samples start with (0 when none are recorded)."""
        return 0 if self.selection is None else self.selection.pairs

    def revealed(self, delta: float) -> dict[str, float] | None:
        """Per tensor, the share of its scalars a change of ``delta`` reveals (None when the
        file records no reach at that delta)."""
        if self.reach is None or delta not in self.reach.deltas:
            return None
        row = self.reach.share[self.reach.deltas.index(delta)]
        return dict(zip(self.reach.tensors, row, strict=True))

    def setting(self, *keys: str) -> Any:
        """An entry of the stored config (``setting("generation", "eps")``), or None when the
        file does not record it."""
        v: Any = self.config
        for k in keys:
            if not isinstance(v, Mapping) or k not in v:
                return None
            v = v[k]
        return v

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any], *, classes: int | None = None,
                  shape: list[int] | None = None) -> FingerprintMeta:
        """The typed metadata of a file's JSON object (``noise`` is not read here).

        Args:
            meta: the object as stored.
            classes: the expected outputs' width, which ``num_classes`` must equal.
            shape: one sample's shape, which ``input_shape`` must equal.

        Raises:
            MetaError: naming the first entry that is wrong, or a version newer than this
                code's.
        """
        version = meta.get("meta_version", 1)
        _want(_is_int(version) and version >= 1, "meta_version", "a version number", version)
        if version > META_VERSION:
            raise MetaError(f"expected metadata of version {META_VERSION} or older, got version {version}: "
                            "the file was written by a newer veriprint")
        kind = meta.get("kind", "classifier")
        _want(kind == "classifier", "kind", "'classifier' (a language model's file is an LmFingerprint)", kind)
        for key in ("domain", "model_outputs"):
            if key not in meta:
                raise MetaError(f"expected a metadata entry {key!r}, found only {sorted(meta)}")
        outputs = meta["model_outputs"]
        _want(outputs in ("logits", "probs"), "model_outputs", "'logits' or 'probs'", outputs)
        d = meta["domain"]
        try:
            domain = InputDomain(**d) if isinstance(d, dict) else None
        except (TypeError, ValueError) as e:
            raise MetaError(f"expected domain {{lo, hi, levels}}, got {d!r:.100} ({e})") from e
        _want(domain is not None, "domain", "an object {lo, hi, levels}", d)
        assert domain is not None
        for key in _STRINGS:
            _want(meta.get(key) is None or isinstance(meta[key], str), key, "a string", meta.get(key))
        for key in _OBJECTS:
            _want(meta.get(key) is None or isinstance(meta[key], dict), key, "an object", meta.get(key))
        n = meta.get("num_classes")
        if n is not None:
            _want(_is_int(n) and (classes is None or n == classes), "num_classes",
                  f"the expected outputs' {classes} classes (an integer)" if classes is not None else "an integer", n)
        s = meta.get("input_shape")
        if s is not None:
            _want(_ints(s) and (shape is None or s == shape), "input_shape",
                  f"the samples' shape {shape}" if shape is not None else "a list of sizes", s)
        labels = meta.get("labels")
        _want(labels is None or _ints(labels), "labels", "a list of class indices", labels)
        secs = meta.get("seconds")
        _want(secs is None or _is_num(secs), "seconds", "a number", secs)
        return cls(
            version=int(version), model_outputs=outputs, domain=domain,
            **{k: meta.get(k) for k in _STRINGS},
            input_shape=None if s is None else tuple(s), num_classes=n,
            labels=None if labels is None else tuple(labels), seconds=None if secs is None else float(secs),
            selection=None if meta.get("selection") is None else SelectionInfo.from_dict(meta["selection"]),
            reach=None if meta.get("reach") is None else ReachInfo.from_dict(meta["reach"]),
            subset_of=None if meta.get("subset_of") is None else SubsetInfo.from_dict(meta["subset_of"]),
            **{k: meta.get(k) for k in _OBJECTS},
            extra={k: v for k, v in meta.items() if k not in _KNOWN},
        )
