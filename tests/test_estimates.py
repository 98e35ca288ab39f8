"""Time estimates from this machine's measured speeds (delift_core.kernels.estimates).

Every fresh single-process utility kernel records its speed in the cache folder; estimates use
the median of the latest three; a kernel read from the pair store records nothing (it measures
the store, not the engine); a damaged speeds file falls back on the labelled guess.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from delift_core.kernels.builder import compute_kernels
from delift_core.data.dataset import load_dataset
from delift_core.kernels.estimates import (SPEEDS_FILE, estimate_seconds, estimate_work,
                                           measured_speed, record_speed, speed_key,
                                           utility_time_guess)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_the_estimate_uses_the_median_of_the_latest_three_measured_speeds(cache: Path) -> None:
    pool = load_dataset("demo:pool").subset(range(6))
    est = estimate_work(pool, kind="utility")
    key = speed_key("utility", "float32", False, "cpu")
    seconds, source = estimate_seconds(est, key)
    assert source == "guess" and seconds == pytest.approx(utility_time_guess(est, "float32"))
    for speed in (1000.0, 100.0, 400.0, 200.0):  # tokens per second, as 10,000 tokens in t s
        assert record_speed(key, 10_000, 10_000 / speed) == pytest.approx(speed)
    assert measured_speed(key) == pytest.approx(200.0)  # median of 100, 400, 200
    seconds, source = estimate_seconds(est, key)
    assert source == "measured" and seconds == pytest.approx(est.tokens / 200.0)
    # other precisions, models, settings and kinds keep their own speeds; no record and no
    # guess (bfloat16, or a GPU) is "unknown"
    assert estimate_seconds(est, speed_key("utility", "bfloat16", False, "cpu"),
                            "bfloat16") == (None, "unknown")
    assert estimate_seconds(est, speed_key("utility", "float32", False, "cpu",
                                           "smollm2-135m-instruct"))[1] == "guess"
    from delift_core.kernels.utility_settings import UtilitySettings

    assert speed_key("utility", "float32", False, "cpu", settings=UtilitySettings(
        batch_size=4)) != key
    assert speed_key("utility", "float32", False, "cpu", settings=UtilitySettings()) == key
    assert estimate_seconds(est, speed_key("utility", "float32", True, "cuda")) == (None,
                                                                                   "unknown")
    runs = json.loads((cache / SPEEDS_FILE).read_text())[key]
    assert len(runs) == 4 and runs[-1]["tokens"] == 10_000
    assert record_speed(key, 10_000, 0.1) is None  # too short to time
    for _ in range(6):
        record_speed(key, 10_000, 20.0)
    assert len(json.loads((cache / SPEEDS_FILE).read_text())[key]) == 5  # the last five kept


def test_a_damaged_speeds_file_falls_back_on_the_guess(cache: Path) -> None:
    est = estimate_work(load_dataset("demo:pool").subset(range(4)), kind="utility")
    key = speed_key("utility", "float32", False, "cpu")
    for bad in ("{not json", json.dumps({key: {"tokens_per_s": 5}}), json.dumps([1, 2]),
                json.dumps({key: [{"tokens_per_s": "fast"}, 7, {"tokens_per_s": -1}]})):
        (cache / SPEEDS_FILE).write_text(bad)
        assert estimate_seconds(est, key)[1] == "guess", bad
    record_speed(key, 5_000, 5.0)  # and the next record writes a good file
    assert measured_speed(key) == pytest.approx(1000.0)


def test_a_fresh_utility_kernel_records_its_speed_and_a_stored_one_does_not(
        cache: Path, tiny_llama, monkeypatch: pytest.MonkeyPatch) -> None:
    import delift_core.kernels.estimates as estimates

    calls: list[tuple] = []
    monkeypatch.setattr(estimates, "record_speed", lambda *a: calls.append(a))
    pool = load_dataset("demo:pool").subset(range(5))
    k = compute_kernels(pool, kind="utility", lm=tiny_llama)
    assert calls == [(speed_key("utility", "float32", False, "cpu", tiny_llama.name),
                      estimate_work(pool, kind="utility").tokens, k.meta["pool"]["seconds"])]
    again = compute_kernels(pool, kind="utility", lm=tiny_llama)  # from the pair store
    assert again.meta["pool"]["pairs_computed"] == 0 and len(calls) == 1
    import delift_core.kernels.builder as builder

    real_embed = builder.embed_rows

    def slow_embed(*a, **kw):  # the first kernel in a process loads the embedder: not a pass
        time.sleep(1.5)
        return real_embed(*a, **kw)

    monkeypatch.setattr(builder, "embed_rows", slow_embed)
    sparse = compute_kernels(load_dataset("demo:pool").subset(range(5, 12)), kind="utility",
                             lm=tiny_llama, neighbours=2, neighbour_random=1)
    assert calls[-1][0] == speed_key("utility", "float32", True, "cpu", tiny_llama.name)
    assert calls[-1][1] == estimate_work(load_dataset("demo:pool").subset(range(5, 12)),
                                         kind="utility", neighbours=2,
                                         neighbour_random=1).tokens
    assert calls[-1][2] == sparse.meta["pool"]["seconds"]  # the engine's time only
    assert sparse.meta["seconds"] >= calls[-1][2] + 1.5


def test_a_packaged_model_has_one_speed_key_however_it_is_named(tmp_path: Path) -> None:
    """The Kernel page keys its estimate by the name the user typed; a kernel records its speed
    under the name load_causal_lm gave the model (the packaged alias). Both must be the same key,
    or a measured speed is never found for "Gemma-3-270M"; a folder or hub id keeps its name."""
    from delift_core.lm.models import PACKAGED_MODELS

    for spec in PACKAGED_MODELS.values():
        want = speed_key("utility", "float32", False, "cpu", spec.alias)
        for name in (spec.alias.upper(), f" {spec.alias} ", *spec.aliases):
            assert speed_key("utility", "float32", False, "cpu", name) == want, name
    assert speed_key("utility", "float32", False, "cpu", None) == speed_key(
        "utility", "float32", False, "cpu", "gemma-3-270m")
    other = speed_key("utility", "float32", False, "cpu", "HuggingFaceTB/SmolLM2-360M-Instruct")
    assert "SmolLM2-360M-Instruct" in other
    folder = tmp_path / "gemma-3-270m"  # a local folder that happens to bear an alias's name
    folder.mkdir()
    assert str(folder) in speed_key("utility", "float32", False, "cpu", str(folder))


def test_passes_in_the_pair_store_take_no_time_in_the_estimate(cache: Path) -> None:
    est = estimate_work(load_dataset("demo:pool").subset(range(4)), kind="utility")  # 20 passes
    key = speed_key("utility", "float32", False, "cpu")
    record_speed(key, 1_000, 1.0)
    full, source = estimate_seconds(est, key)
    assert source == "measured" and full == pytest.approx(est.tokens / 1_000)
    assert estimate_seconds(est, key, stored=5)[0] == pytest.approx(full * 15 / 20)
    assert estimate_seconds(est, key, stored=20)[0] == 0.0
    guess = estimate_seconds(est, speed_key("utility", "float32", True, "cpu"), stored=10)
    assert guess == (pytest.approx(utility_time_guess(est) / 2), "guess")
