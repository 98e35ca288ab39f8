"""The pair store makes every new data version incremental: a grown pool computes exactly its new
pairs, an edited row only its row and column, kernels assembled from the store are bit-identical
to the computing run's, two processes write one store at once, a killed process resumes, and
`delift cache info|prune|clear` report and remove what is stored."""

from __future__ import annotations

import multiprocessing as mp
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from delift_core.cli import main
from delift_core.stores.pairstore import PairStore, row_key
from delift_core.kernels.utility_settings import Texts, UtilitySettings
from delift_core.kernels.utility import UtilityKernel, store_path

PROMPTS = [f"Task {k}: say the number {k} twice." for k in range(9)]
RESPS = [f"{k} {k}" for k in range(9)]
SETTINGS = UtilitySettings(batch_size=4, block_size=2, max_field_tokens=48, max_response_tokens=16,
                           plain_template="Q: {prompt}\nA: ",
                           example_template="Ex: {example_prompt}\n{example_response}\n"
                                            "Q: {prompt}\nA: ")


def rows(n: int, edit: int | None = None) -> Texts:
    resps = list(RESPS[:n])
    if edit is not None:
        resps[edit] = "something else entirely"
    return Texts(PROMPTS[:n], resps)


def engine(lm, root: Path) -> UtilityKernel:
    return UtilityKernel(lm, SETTINGS, cache_root=root)


def test_a_grown_pool_computes_exactly_its_new_pairs(tiny_llama, tmp_path):
    n, m = 6, 3
    first = engine(tiny_llama, tmp_path).compute(rows(n), rows(n))
    assert first.meta["pairs_computed"] == n * n + n
    seen = []
    grown = engine(tiny_llama, tmp_path).compute(rows(n + m), rows(n + m),
                                                 progress=lambda d, t: seen.append((d, t)))
    new = (n + m) ** 2 - n * n + m
    assert grown.meta["pairs_computed"] == new and grown.meta["plain_computed"] == m
    assert grown.meta["pairs_reused"] == n * n + n
    assert seen[-1] == (new, new)
    np.testing.assert_array_equal(grown.values[:n, :n], first.values)  # bit-identical
    fresh = UtilityKernel(tiny_llama, SETTINGS, use_cache=False).compute(rows(n + m), rows(n + m))
    np.testing.assert_allclose(grown.values, fresh.values, atol=1e-6, rtol=0)
    cut = engine(tiny_llama, tmp_path).compute(rows(4), rows(4))  # a smaller "first N rows"
    assert cut.meta["pairs_computed"] == 0
    np.testing.assert_array_equal(cut.values, first.values[:4, :4])


def test_an_edited_row_recomputes_only_its_row_and_column(tiny_llama, tmp_path):
    n = 6
    first = engine(tiny_llama, tmp_path).compute(rows(n), rows(n))
    edited = engine(tiny_llama, tmp_path).compute(rows(n, edit=2), rows(n, edit=2))
    assert edited.meta["pairs_computed"] == 2 * n - 1 + 1  # row 2, column 2, its plain pass
    keep = [k for k in range(n) if k != 2]
    np.testing.assert_array_equal(edited.values[np.ix_(keep, keep)],
                                  first.values[np.ix_(keep, keep)])
    assert not np.array_equal(edited.values[2], first.values[2])


def test_assembly_is_bit_identical_dense_sparse_and_across_roles(tiny_llama, tmp_path):
    pool, target = rows(7), Texts(PROMPTS[7:], RESPS[7:])
    dense = engine(tiny_llama, tmp_path).compute(pool, pool)
    again = engine(tiny_llama, tmp_path).compute(pool, pool)
    assert again.meta["pairs_computed"] == 0
    assert again.values.tobytes() == dense.values.tobytes()
    r, c = np.array([0, 3, 3, 6, 1]), np.array([5, 0, 6, 6, 1])
    sparse = engine(tiny_llama, tmp_path).compute(pool, pool, pairs=(r, c))
    assert sparse.meta["pairs_computed"] == 0
    np.testing.assert_array_equal(sparse.values.toarray()[r, c], dense.values[r, c])
    # a target kernel (other rows helped by the same pool) computes only the target's pairs
    tk = engine(tiny_llama, tmp_path).compute(target, pool)
    assert tk.meta["pairs_computed"] == len(target.prompts) * (7 + 1)


def test_duplicate_rows_are_computed_once(tiny_llama, tmp_path):
    dup = Texts(PROMPTS[:3] + PROMPTS[:1], RESPS[:3] + RESPS[:1])
    res = engine(tiny_llama, tmp_path).compute(dup, dup)
    assert res.meta["pairs_computed"] == 3 * 3 + 3
    np.testing.assert_array_equal(res.values[3], res.values[0])
    np.testing.assert_array_equal(res.values[:, 3], res.values[:, 0])


def _writer(path: str, seed: int, n: int) -> None:
    store = PairStore(path)
    space = store.space({"test": "concurrency"}, "m", "float32")
    rng = np.random.default_rng(seed)
    for b in range(n):
        items = [(row_key(f"t{k}", ""), row_key(f"e{seed}-{b}", ""), float(rng.random()))
                 for k in range(50)]
        store.put_pairs(space, items)
        store.get_pairs(space, [items[0][0]])
    store.close()


def test_two_processes_write_one_store_at_once(tmp_path):
    path = str(tmp_path / "pairs.sqlite")
    PairStore(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, seed, 40)) for seed in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    store = PairStore(path)
    space = store.space({"test": "concurrency"}, "m", "float32")
    got = store.get_pairs(space, [row_key(f"t{k}", "") for k in range(50)])
    assert len(got) == 2 * 40 * 50 and store.damaged == 0
    store.close()


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_engine_equivalence import tiny_lm
    from delift_core.kernels.utility import UtilityKernel
    from delift_core.kernels.utility_settings import Texts, UtilitySettings
    from test_pairstore import SETTINGS, rows

    def progress(done, total):
        if done >= total // 2:
            os.kill(os.getpid(), signal.SIGKILL)

    UtilityKernel(tiny_lm("llama"), SETTINGS, cache_root={root!r}).compute(
        rows(6), rows(6), progress=progress)
""")


def test_a_killed_process_resumes_at_pair_granularity(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_engine_equivalence import tiny_lm

    script = KILLED_RUN.format(tests=str(Path(__file__).parent), root=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    store = PairStore(store_path(tmp_path))
    kept = store.count_pairs()
    store.close()
    assert 0 < kept < 36
    lm = tiny_lm("llama")
    res = engine(lm, tmp_path).compute(rows(6), rows(6))
    assert res.meta["pairs_computed"] == 36 - kept and res.meta["entries_damaged_recomputed"] == 0
    fresh = UtilityKernel(lm, SETTINGS, use_cache=False).compute(rows(6), rows(6))
    np.testing.assert_allclose(res.values, fresh.values, atol=1e-6, rtol=0)


def test_cache_info_prune_and_clear(tiny_llama, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path))
    (tmp_path / "kernels" / "oldkey").mkdir(parents=True)
    (tmp_path / "kernels" / "oldkey" / "examples_000000.npy").write_bytes(b"x" * 100)
    UtilityKernel(tiny_llama, SETTINGS).compute(rows(3), rows(3))
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "tiny-llama-0-test (float32): 9 pairs, 3 plain distances" in out
    assert "old block cache (no longer read" in out
    assert main(["cache", "prune"]) == 2
    assert "give --model NAME or --older-than DAYS" in capsys.readouterr().err
    assert main(["cache", "prune", "--older-than", "1"]) == 0  # used just now: kept
    assert "pruned 0 value spaces" in capsys.readouterr().out
    assert main(["cache", "prune", "--model", "tiny-llama-0"]) == 0
    assert "pruned 1 value spaces (12 entries)" in capsys.readouterr().out
    res = UtilityKernel(tiny_llama, SETTINGS).compute(rows(3), rows(3))
    assert res.meta["pairs_computed"] == 12
    assert main(["cache", "clear"]) == 0
    assert not store_path().exists() and not (tmp_path / "kernels").exists()
    assert main(["cache", "info"]) == 0
    assert "no stored utility values" in capsys.readouterr().out


def test_the_cli_refuses_ray_options_without_the_ray_backend(capsys, tmp_path):
    assert main(["kernel", "--pool", "demo:pool", "--out", str(tmp_path / "k"), "--workers",
                 "2"]) == 2
    assert "--ray-address and --workers need --backend ray" in capsys.readouterr().err


def test_the_estimate_says_how_many_passes_are_stored(tiny_llama, tmp_path, monkeypatch):
    from delift_core.data.dataset import load_dataset
    from delift_core.kernels.estimates import estimate_work, stored_passes

    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path))
    demo = load_dataset("demo:pool")
    small, grown = demo.subset(range(3)), demo.subset(range(5))
    assert stored_passes(estimate_work(grown), grown, settings=SETTINGS) == 0  # no store yet
    UtilityKernel(tiny_llama, SETTINGS).compute(small, small)
    est = estimate_work(grown)
    assert est.units == 5 * 5 + 5
    assert stored_passes(est, grown, settings=SETTINGS, model="tiny-llama-0") == 3 * 3 + 3
    assert stored_passes(est, grown, settings=SETTINGS, model="other-model") == 0
    assert stored_passes(est, grown, settings=SETTINGS, dtype="bfloat16") == 0
    assert stored_passes(est, grown) == 0  # the default settings: another value space
