"""How a kernel was made, in one typed shape for computed and loaded kernels alike.

:class:`KernelMeta` is what :class:`~delift_core.kernels.builder.Kernels` carries and what
``kernel_meta.json`` holds (:meth:`KernelMeta.to_json`, ``meta_version`` 2). A loaded kernel
carries the meta it was computed with plus ``source`` (the file it came from, and whether it was
trusted without a row record); :meth:`KernelMeta.from_json` reads every older shape: version 1
files (the same keys, no version) and version 1 loaded metas (the computed meta nested under
``"computed"``). Readers use the attributes, or the read-only mapping over :meth:`to_json`
(``meta["pool"]["pairs_computed"]``), which is the same for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping

__all__ = ["KernelMeta", "META_VERSION", "SET_ROLES"]

META_VERSION = 2
SET_ROLES = ("pool", "target", "existing")
"""The data sets a kernel's rows and columns come from (and the kernels: pool, target, existing)."""

_SPARSE_KEYS = ("sparse", "neighbours", "random_neighbours", "neighbour_seed")


@dataclass
class KernelMeta(Mapping):
    """A kernel's record: kind, the rows of each set (ids and content hashes), the engine's record
    of each kernel, the settings that changed its values, embeddings, time, diagonal policy, and
    for a loaded kernel where it came from."""

    kind: str
    ids: dict[str, list[str]] = field(default_factory=dict)
    hashes: dict[str, list[str]] = field(default_factory=dict)
    roles: dict[str, dict] = field(default_factory=dict)
    """The engine's record of each kernel (pool, target, existing): shape, pairs computed ..."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The settings that change values (:func:`delift_core.settings.record`)."""
    sparse: dict[str, Any] | None = None
    """``{"neighbours", "random_neighbours", "neighbour_seed"}`` of a sparse kernel, else None."""
    target_direction: str | None = None
    embedder: str | None = None
    embeddings: dict[str, dict] = field(default_factory=dict)
    seconds: float | None = None
    diagonal: dict | None = None
    source: dict | None = None
    """A loaded kernel's origin: ``{"file": ..., "trusted": bool}``; None when computed here."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Everything else a kernel records (similarity rule, row-hash rule, learned-kernel figures)."""

    @property
    def learned(self) -> dict[str, dict]:
        """Of a learned kernel: each learned kernel's record (exact and predicted pairs, held-out
        fidelity); empty for an exact kernel."""
        return {r: m for r, m in self.roles.items() if isinstance(m, dict) and m.get("learned")}

    @property
    def loaded(self) -> bool:
        """Whether the kernel was read from files rather than computed in this process."""
        return self.source is not None

    def rows(self, role: str) -> tuple[list[str] | None, list[str] | None]:
        """(ids, content hashes) of a set's rows, or (None, None) when not recorded."""
        return self.ids.get(role), self.hashes.get(role)

    def with_(self, **changes: Any) -> "KernelMeta":
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The flat record ``kernel_meta.json`` holds (what the mapping interface reads)."""
        d: dict[str, Any] = {"meta_version": META_VERSION, "kind": self.kind}
        for role in SET_ROLES:
            if role in self.ids:
                d[f"{role}_ids"] = self.ids[role]
            if role in self.hashes:
                d[f"{role}_hashes"] = self.hashes[role]
        d.update(self.extra)
        d.update(self.roles)
        if self.sparse:
            d.update({"sparse": True, **self.sparse})
        if self.target_direction is not None:
            d["target_direction"] = self.target_direction
        if self.settings:
            d["settings"] = self.settings
        if self.embedder is not None:
            d["embedder"] = self.embedder
        if self.embeddings:
            d["embeddings"] = self.embeddings
        if self.seconds is not None:
            d["seconds"] = self.seconds
        if self.diagonal is not None:
            d["diagonal"] = self.diagonal
        if self.source is not None:
            d["source"] = self.source
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | "KernelMeta" | None) -> "KernelMeta":
        """A KernelMeta from any shape delift has written (version 2, version 1 computed or
        loaded, or an empty record); unknown keys are kept in :attr:`extra`."""
        if isinstance(d, KernelMeta):
            return d
        d = dict(d or {})
        source = d.pop("source", None)
        if isinstance(d.get("computed"), dict):  # version 1, loaded: the record nested
            inner = cls.from_json(d["computed"])
            return replace(inner, source={"file": d.get("pool_file"),
                                          "trusted": bool(d.get("trusted"))},
                           diagonal=d.get("diagonal", inner.diagonal))
        if d.get("kind") == "file":  # version 1, a bare file loaded with trust: no record
            return cls("utility", source={"file": d.get("pool_file"),
                                          "trusted": bool(d.get("trusted"))},
                       diagonal=d.get("diagonal"))
        d.pop("meta_version", None)
        meta = cls(kind=d.pop("kind", "utility"), source=source)
        for role in SET_ROLES:
            if f"{role}_ids" in d:
                meta.ids[role] = list(d.pop(f"{role}_ids"))
            if f"{role}_hashes" in d:
                meta.hashes[role] = list(d.pop(f"{role}_hashes"))
            if isinstance(d.get(role), dict):
                meta.roles[role] = d.pop(role)
        if d.pop("sparse", False):
            meta.sparse = {k: d.pop(k, None) for k in _SPARSE_KEYS[1:]}
        meta.target_direction = d.pop("target_direction", None)
        meta.settings = dict(d.pop("settings", None) or {})
        meta.embedder = d.pop("embedder", None)
        meta.embeddings = dict(d.pop("embeddings", None) or {})
        meta.seconds = d.pop("seconds", None)
        meta.diagonal = d.pop("diagonal", None)
        meta.extra = d
        return meta

    # read-only mapping over the flat record, so that ``meta["pool"]`` reads the same for
    # computed and loaded kernels
    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())
