"""Kernel files: saving kernels with the record of the rows they are for, and loading them back
only for those rows; plus the checks every kernel passes where the API takes one.

``kernel_meta.json`` records each set's row ids and content hashes (:func:`row_hashes`); a kernel
whose rows or columns are not exactly the data given is refused with the first differing rows
named, and a file with no such record is accepted only when the caller trusts it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from delift_core.data.dataset import Dataset
from delift_core.errors import KernelError
from delift_core.kernels.builder import ROLES, Kernels, differing_rows
from delift_core.kernels.meta import KernelMeta
from delift_core.kernels.matrices import KernelMatrix, is_sparse

__all__ = ["save_kernels", "load_kernels", "check_kernels", "check_target_direction"]

logger = logging.getLogger(__name__)


def _load_matrix(path: str | Path, shape: tuple[int, int], what: str) -> KernelMatrix:
    """A kernel file (.npy dense, memory-mapped; .npz sparse), checked for shape, numeric type and
    finite values; every problem is a :class:`KernelError` naming the file."""
    p = Path(path)
    if p.suffix == ".npy" and not p.exists() and p.with_suffix(".npz").exists():
        p = p.with_suffix(".npz")  # a sparse kernel saved by `delift kernel --neighbours`
    if not p.exists():
        raise KernelError(f"{path}: no such kernel file")
    if p.is_dir():
        raise KernelError(f"{path}: is a folder, not a kernel file")
    if p.suffix == ".npz":
        try:
            m = sp.load_npz(p).tocsr()
        except Exception as e:
            raise KernelError(f"{p}: not a readable sparse .npz matrix ({e})") from None
        values = m.data
    else:
        try:
            m = np.load(p, mmap_mode="r", allow_pickle=False)
        except Exception as e:
            raise KernelError(f"{p}: not a readable .npy matrix ({type(e).__name__}: {e})") from None
        values = m
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise KernelError(f"{p}: the {what} kernel holds non-numeric values (dtype {values.dtype})")
    if m.shape != shape:
        raise KernelError(f"{p}: the {what} kernel has shape {tuple(m.shape)}, expected "
                          f"{shape} for this data")
    _check_finite(m, f"{p}: the {what} kernel")
    if is_sparse(m):
        return m.astype(np.float32)
    return np.asarray(m, dtype=np.float32)


def _check_finite(m: KernelMatrix, what: str) -> None:
    """KernelError naming the first NaN or infinite entry (row, column), in row blocks."""
    if is_sparse(m):
        csr = m.tocsr()
        bad = np.flatnonzero(~np.isfinite(csr.data))
        if bad.size:
            row = int(np.searchsorted(csr.indptr, bad[0], side="right") - 1)
            col = int(csr.indices[bad[0]])
            raise KernelError(f"{what} holds {_kind(csr.data[bad[0]])} at row {row}, column {col}")
        return
    step = max(1, (1 << 22) // max(1, m.shape[1] if m.ndim == 2 else 1))
    for r in range(0, m.shape[0], step):
        chunk = np.asarray(m[r: r + step])
        if not np.isfinite(chunk).all():
            i, j = np.argwhere(~np.isfinite(chunk))[0]
            raise KernelError(f"{what} holds {_kind(chunk[i, j])} at row {r + int(i)}, "
                              f"column {int(j)}")


def _kind(x: Any) -> str:
    return "NaN" if np.isnan(x) else "an infinite value"


def save_kernels(kernels: Kernels, folder: str | Path) -> dict[str, Path]:
    """Write kernels the way :func:`load_kernels` reads them back: ``kernel_<which>.npy`` (dense)
    or ``.npz`` (scipy sparse, from ``neighbours``) for pool/target/existing, and
    ``kernel_meta.json`` (how they were made, with each set's row ids and content hashes, checked
    on loading)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for which in ROLES:
        m = getattr(kernels, which)
        if m is None:
            continue
        if is_sparse(m):
            paths[which] = out / f"kernel_{which}.npz"
            sp.save_npz(paths[which], m.tocsr())
        else:
            paths[which] = out / f"kernel_{which}.npy"
            np.save(paths[which], m)
    for which, mask in kernels.exact.items():  # a learned kernel's exact-value marks
        paths[f"{which}_exact"] = out / f"kernel_{which}_exact.npz"
        sp.save_npz(paths[f"{which}_exact"], mask.tocsr())
    paths["meta"] = out / "kernel_meta.json"
    paths["meta"].write_text(json.dumps(kernels.meta.to_json(), indent=1, default=str))
    return paths


def _check_rows(saved: KernelMeta, role: str, ds: Dataset, meta_file: Path) -> None:
    """KernelError unless the kernel's ``role`` rows are exactly ``ds``'s rows (ids, order and
    content), naming the first rows that differ."""
    ids, hashes = saved.rows(role)
    if ids is None or hashes is None:
        raise KernelError(f"{meta_file}: records no {role} row ids and content hashes (an older "
                          f"kernel folder), so it cannot be checked against the {role} given; "
                          "recompute it, or pass --trust-kernel (trust=True) if it was computed "
                          "for exactly these rows in this order")
    if len(ids) != len(ds):
        raise KernelError(f"{meta_file}: the kernel was computed for {len(ids)} {role} rows, the "
                          f"{role} given has {len(ds)}")
    differ = differing_rows(ids, hashes, ds, "kernel", f"{role} rows")
    if differ:
        raise KernelError(f"{meta_file}: {differ}; recompute the kernel for this data")


def load_kernels(path: str | Path, pool: Dataset, *, target: Dataset | None = None,
                 existing: Dataset | None = None, target_kernel: str | Path | None = None,
                 existing_kernel: str | Path | None = None, trust: bool = False) -> Kernels:
    """Kernels from a ``delift kernel`` output folder or a pool ``.npy``/``.npz`` file.

    The folder's ``kernel_meta.json`` (or one beside a file) must record the rows of each set:
    ids, order and content hashes are checked against the data given, and a kernel of other rows
    is refused with the first differing rows named. A file without such a record is accepted only
    with ``trust=True`` (the CLI's ``--trust-kernel``). Shapes, numeric type and finite values are
    always checked. Matrices from files are treated as raw utilities (min-max scaled for selection).
    """
    p = Path(path)
    if not p.exists() and not (p.suffix == ".npy" and p.with_suffix(".npz").exists()):
        raise KernelError(f"{path}: no such kernel file or folder")
    folder = p if p.is_dir() else p.parent
    pool_file = p / "kernel_pool.npy" if p.is_dir() else p
    if p.is_dir() and not pool_file.exists() and (p / "kernel_pool.npz").exists():
        pool_file = p / "kernel_pool.npz"
    n = len(pool)
    meta_file = folder / "kernel_meta.json"
    saved: dict | None = None
    if meta_file.exists():
        try:
            saved = json.loads(meta_file.read_text())
        except (OSError, ValueError) as e:
            raise KernelError(f"{meta_file}: not readable JSON ({e})") from None
        if not isinstance(saved, dict):
            raise KernelError(f"{meta_file}: not a kernel record (a JSON object)")
    meta = KernelMeta.from_json(saved or {"kind": "utility"}).with_(
        source={"file": str(pool_file), "trusted": bool(trust)})
    other_file = {r for r, f in (("target", target_kernel), ("existing", existing_kernel)) if f}
    if other_file & set(meta.roles):  # the folder's record of that kernel is not the file's
        meta = meta.with_(roles={r: m for r, m in meta.roles.items() if r not in other_file})
    if not trust:
        if saved is None:
            raise KernelError(f"{pool_file}: no kernel_meta.json beside it says which rows this "
                              "kernel is for, so it cannot be checked against the pool; give the "
                              "`delift kernel` output folder, or pass --trust-kernel "
                              "(trust=True) if it was computed for exactly these rows in this order")
        for role, ds in (("pool", pool), ("target", target), ("existing", existing)):
            if ds is not None:
                _check_rows(meta, role, ds, meta_file)
    k = Kernels("embedding" if meta.kind == "embedding" else "utility",
                pool=_load_matrix(pool_file, (n, n), "pool"), meta=meta)
    if target is not None:
        f = target_kernel or folder / "kernel_target.npy"
        k.target = _load_matrix(f, (len(target), n), "target")
    if existing is not None:
        f = existing_kernel or folder / "kernel_existing.npy"
        k.existing = _load_matrix(f, (n, len(existing)), "existing")
    for which in ROLES:  # a learned kernel: which values are exact (not of another file's)
        mask_file = folder / f"kernel_{which}_exact.npz"
        if getattr(k, which) is not None and mask_file.exists() and which not in other_file:
            k.exact[which] = _load_matrix(mask_file, getattr(k, which).shape, f"{which} exact-mask")
    return k


def check_kernels(kernels: Kernels, pool_size: int) -> None:
    """KernelError unless the kernels fit a pool of ``pool_size`` rows (pool n x n, target m x n,
    existing n x p) and hold only finite numbers: checked where the API takes kernels."""
    want = {"pool": (pool_size, pool_size), "target": (None, pool_size),
            "existing": (pool_size, None)}
    for role, (rows, cols) in want.items():
        m = getattr(kernels, role)
        if m is None:
            continue
        shape = getattr(m, "shape", None)
        if shape is None or len(shape) != 2 or (rows is not None and shape[0] != rows) or \
                (cols is not None and shape[1] != cols):
            expect = f"({rows if rows is not None else 'any'}, {cols if cols is not None else 'any'})"
            raise KernelError(f"the {role} kernel has shape {tuple(shape) if shape else '?'}, "
                              f"expected {expect} for a pool of {pool_size} rows")
        _check_finite(m, f"the {role} kernel")


def check_target_direction(kernels: Kernels, asked: str | None) -> None:
    """KernelError when a direction is asked for and loaded kernels' target kernel was computed
    with another (or none recorded): the direction is fixed when the kernel is computed, so
    selecting "with" another one would silently use the wrong matrix."""
    if asked is None or kernels.target is None:
        return
    got = kernels.meta.target_direction
    if got != asked:
        raise KernelError(f"target direction {asked} was asked for, but the target kernel was "
                          f"computed with {got or 'no recorded direction'}; recompute it with "
                          f"`delift kernel --target-direction {asked}` or leave the direction "
                          "out")
