"""What a selection cost: model passes, texts embedded and seconds on this machine, and for a
sparse or learned utility kernel its passes against the exact (dense) kernel's.

A method's gain over random means little without its cost ("Chasing Random", Diddee & Ippolito,
2024), so every manifest records this, and the CLI, the studio and the report show it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["selection_cost", "cost_line", "cost_cell"]

_ROLES = ("pool", "target", "existing")


def selection_cost(selection: Any) -> dict[str, Any]:
    """The cost record of a :class:`~delift_core.selection.select.Selection`: passes computed and
    read from the stores (kernel, a verified selection's covers and per-row scores), texts
    embedded, seconds (kernel, scores, verification, selection, total), and ``exact_kernel_passes`` (the dense utility kernel's passes, one per
    pair plus one plain pass per row) beside ``kernel_passes`` for any utility kernel."""
    meta = selection.kernels.meta if selection.kernels is not None else {}
    computed = reused = 0
    exact_passes = kernel_passes = verify_passes = 0
    verify_s = 0.0
    for role in _ROLES:
        m = meta.get(role) if meta else None
        if not isinstance(m, dict) or "pairs_computed" not in m:
            continue
        c, r = int(m.get("pairs_computed") or 0), int(m.get("pairs_reused") or 0)
        computed, reused = computed + c, reused + r
        kernel_passes += c + r
        shape = m.get("shape") or [0, 0]
        exact_passes += int(shape[0]) * int(shape[1]) + int(shape[0])
        v = m.get("verification") or {}  # a verified selection's covers, scored exactly
        vc, vr = int(v.get("passes_computed") or 0), int(v.get("passes_reused") or 0)
        computed, reused = computed + vc, reused + vr
        verify_passes += vc + vr
        verify_s += float(v.get("seconds") or 0.0)
    embedded = embed_reused = 0
    for st in ((meta.get("embeddings") if meta else None) or {}).values():
        embedded += int(st.get("computed") or 0)
        embed_reused += int(st.get("reused") or 0)
    scores = selection.scores.meta if selection.scores is not None else {}
    computed += int(scores.get("passes_computed") or 0)
    reused += int(scores.get("passes_reused") or 0)
    kernel_s = float(meta.get("seconds") or 0.0) if meta else 0.0
    scores_s = float(scores.get("seconds") or 0.0)
    out: dict[str, Any] = {
        "model_passes_computed": computed, "model_passes_reused": reused,
        "texts_embedded": embedded, "texts_embedding_reused": embed_reused,
        "kernel_seconds": round(kernel_s, 3), "scores_seconds": round(scores_s, 3),
        "selection_seconds": round(float(selection.seconds or 0.0), 3),
        "seconds": round(kernel_s + scores_s + verify_s + float(selection.seconds or 0.0), 3),
        "loaded_kernel": bool(getattr(meta, "loaded", False)),
    }
    if kernel_passes:
        out.update(kernel_passes=kernel_passes, exact_kernel_passes=exact_passes,
                   kernel_share_of_exact=round(kernel_passes / exact_passes, 6)
                   if exact_passes else None)
    if verify_passes:
        out.update(verification_passes=verify_passes, verification_seconds=round(verify_s, 3))
    if scores:
        out["scores"] = scores.get("kind")
    return out


def _share(part: int, whole: int) -> str:
    """'34.1 %', or for a share under 1 % its two significant digits and '1 in N' (a learned
    kernel of a large pool is a few thousandths of a percent, which '0.0 %' would hide)."""
    share = 100 * part / whole
    if share >= 1 or part == 0:
        return f"{share:.1f} %"
    return f"{share:.2g} % (1 in {round(whole / part):,})"


def cost_line(cost: dict[str, Any]) -> str:
    """One line for a console or a caption: passes, texts, seconds, and the share of the exact
    kernel's passes when there is a utility kernel."""
    parts = [f"{cost['model_passes_computed']:,} model passes computed "
             f"({cost['model_passes_reused']:,} reused)",
             f"{cost['texts_embedded']:,} texts embedded ({cost['texts_embedding_reused']:,} "
             "reused)", f"{cost['seconds']:.1f} s on this machine"]
    if cost.get("exact_kernel_passes"):
        parts.append(f"kernel {cost['kernel_passes']:,} passes = "
                     f"{_share(cost['kernel_passes'], cost['exact_kernel_passes'])} of the exact "
                     f"kernel's {cost['exact_kernel_passes']:,}")
    if cost.get("verification_passes"):
        parts.append(f"the selection verified with {cost['verification_passes']:,} of those "
                     "passes")
    if cost.get("loaded_kernel"):
        parts.append("kernel loaded from a folder (its own cost is in its kernel_meta.json)")
    return "cost: " + ", ".join(parts)


def cost_cell(cost: dict[str, Any] | None) -> str:
    """A short form for a table cell: '1,613 passes · 240 texts · 95 s' ('' when unknown)."""
    if not cost:
        return ""
    passes = cost["model_passes_computed"] + cost["model_passes_reused"]
    texts = cost["texts_embedded"] + cost["texts_embedding_reused"]
    return f"{passes:,} passes · {texts:,} texts · {cost['seconds']:.0f} s"
