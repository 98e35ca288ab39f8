"""Embeddings cached per text by content: a grown or edited pool embeds only its new rows, a
stopped run keeps its finished chunks, damaged entries are found and recomputed, and the
console says what happened (issue: Reliability, items 6 and 7)."""

from __future__ import annotations

import sqlite3
import zlib

import numpy as np
import pytest

from delift_core.kernels.embedding import EmbedStats, embed_texts
from delift_core.errors import SelectionError


class FakeEmbedder:
    """Deterministic unit vectors from the text; counts what it was asked to encode."""

    delift_name = "fake-embedder"

    def __init__(self, fail_after: int | None = None) -> None:
        self.seen: list[str] = []
        self.fail_after = fail_after

    def encode(self, texts, **kwargs):
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise KeyboardInterrupt
        self.seen += list(texts)
        out = []
        for t in texts:
            v = np.random.default_rng(zlib.crc32(t.encode())).normal(size=8).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path / "cache"))


def texts(n, edit=()):
    return [f"text {k}" + (" edited" if k in edit else "") + " " * (k % 5) for k in range(n)]


def test_grown_and_edited_pools_embed_only_their_new_rows():
    a = FakeEmbedder()
    first = embed_texts(a, texts(50))
    assert len(a.seen) == 50
    b = FakeEmbedder()
    stats = EmbedStats()
    grown = embed_texts(b, texts(60, edit=(3,)), stats=stats)
    assert sorted(b.seen) == sorted([texts(60, edit=(3,))[3]] + texts(60)[50:])
    assert (stats.reused, stats.computed, stats.total) == (49, 11, 60)
    np.testing.assert_array_equal(grown[:3], first[:3])
    np.testing.assert_array_equal(grown[4:50], first[4:50])
    c = FakeEmbedder()
    again = embed_texts(c, texts(60, edit=(3,)))
    assert c.seen == [] and np.array_equal(again, grown)


def test_a_stopped_run_keeps_finished_chunks():
    with pytest.raises(KeyboardInterrupt):
        embed_texts(FakeEmbedder(fail_after=20), texts(50), commit_rows=10)
    resumed = FakeEmbedder()
    embed_texts(resumed, texts(50), commit_rows=10)
    assert len(resumed.seen) == 30  # the two finished chunks of 10 were kept


def test_damaged_entries_are_detected_and_recomputed(tmp_path):
    embed_texts(FakeEmbedder(), texts(10))
    db = sqlite3.connect(tmp_path / "cache" / "embeddings.sqlite")
    db.execute("UPDATE vectors SET vec = substr(vec, 1, 5) WHERE key IN "
               "(SELECT key FROM vectors ORDER BY key LIMIT 2)")  # two truncated vectors
    db.commit()
    db.close()
    again = FakeEmbedder()
    stats = EmbedStats()
    embed_texts(again, texts(10), stats=stats)
    assert stats.damaged == 2 and stats.computed == 2 and len(again.seen) == 2


def test_progress_counts_only_computed_texts():
    embed_texts(FakeEmbedder(), texts(30))
    calls = []
    embed_texts(FakeEmbedder(), texts(35), progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 5) and calls[-1] == (5, 5)


def test_dense_kernels_above_the_limit_are_refused_before_work():
    from delift_core.kernels.builder import compute_kernels
    from delift_core.data.dataset import load_dataset

    pool = load_dataset("demo:pool")
    with pytest.raises(SelectionError, match=r"need about .* GiB .*--neighbours \d+"):
        compute_kernels(pool, kind="embedding", embedder=FakeEmbedder(),
                        max_dense_bytes=100_000)


def test_kernel_report_says_what_happened():
    from delift_core.kernels.builder import compute_kernels
    from delift_core.data.dataset import load_dataset
    from delift_core.kernels.builder import kernel_report

    pool = load_dataset("demo:pool").subset(range(20))
    first = compute_kernels(pool, kind="embedding", embedder=FakeEmbedder())
    assert kernel_report(first) == ["embedding pool: 20 of 20 texts computed, 0 reused from the "
                                    "cache"]
    again = compute_kernels(pool, kind="embedding", embedder=FakeEmbedder())
    assert kernel_report(again) == ["embedding pool: 0 of 20 texts computed, 20 reused from the "
                                    "cache"]


def test_a_local_embedder_folder_is_named_by_its_content(tmp_path, monkeypatch):
    """The embedding cache is keyed by the embedder's name: a local folder edited in place must
    not reuse the old folder's embeddings."""
    import sentence_transformers

    import delift_core.lm.models as models

    folder = tmp_path / "my-embedder"
    folder.mkdir()
    (folder / "config.json").write_text('{"v": 1}')

    class Stub:
        def __init__(self, *a, **k):
            pass

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Stub)
    monkeypatch.setattr(models, "_LOADED", {})
    first = models.load_embedder(str(folder)).delift_name
    (folder / "config.json").write_text('{"v": 2}')
    monkeypatch.setattr(models, "_LOADED", {})
    second = models.load_embedder(str(folder)).delift_name
    assert first.startswith(str(folder) + "@") and first != second
