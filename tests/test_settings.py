"""The settings spec: every engine setting declared once, on every surface, checked once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from delift_core import settings as spec
from delift_core.cli import build_parser, main
from delift_core.data.dataset import load_dataset
from delift_core.errors import DeliftError, SettingError
from delift_core.kernels.builder import Kernels, SparseSpec, compute_kernels, row_hashes
from delift_core.kernels.files import load_kernels
from delift_core.kernels.meta import KernelMeta

ROOT = Path(__file__).resolve().parents[1]


def _options(command: str) -> dict[str, object]:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return {a.dest: a for a in sub._actions}


def test_every_setting_has_a_cli_option_unless_the_spec_says_why_not():
    dests = {**_options("kernel"), **_options("select")}
    missing = [s.name for s in spec.SETTINGS.values()
               if s.name not in dests and not s.no_cli]
    assert not missing, f"settings with no CLI option and no reason: {missing}"
    for s in spec.SETTINGS.values():
        if s.name in dests and s.name != "kernel":
            assert s.flag in dests[s.name].option_strings, s.name


def test_every_setting_has_a_studio_widget_unless_the_spec_says_why_not():
    from studio import ui

    pages = "\n".join(p.read_text() for p in (ROOT / "pages").glob("*.py"))
    for s in spec.SETTINGS.values():
        if s.widget == "page":
            assert (re.search(rf'setting_widget\(\s*"{s.name}"', pages)
                    or f'key="p_{s.name}"' in pages or f'["p_{s.name}"] =' in pages), \
                f"{s.name}: widget='page' but no page builds it"
        elif s.widget == "advanced":
            pages_showing = [page for page, groups in ui.ADVANCED_GROUPS.items()
                             if s.group in groups]
            assert pages_showing, f"{s.name}: no page's Advanced settings shows group {s.group}"
            assert all(re.search(rf'advanced_settings\(\s*"{p}"', pages) for p in pages_showing)
        else:
            assert s.no_widget, f"{s.name}: no studio widget and no reason given"


def test_the_studio_starts_from_the_spec_defaults():
    from studio import state

    for s in spec.SETTINGS.values():
        if s.widget and s.default is not None and s.name not in state.STUDIO_DECIDES:
            assert state.DEFAULTS[state.setting_key(s.name)] == s.default, s.name


@pytest.mark.parametrize("name, value, message", [
    ("neighbours", 0, r"neighbours \(--neighbours\): must be at least 1"),
    ("neighbours", 2.5, r"must be a whole number"),
    ("diagonal", "nope", r"diagonal \(--diagonal\): unknown value 'nope'; use one of reference, max, rowmax"),
    ("target_direction", "up", r"use one of helps-target, reference"),
    ("batch_size", "x", r"batch_size \(--batch-size\): must be a whole number"),
    ("epsilon", 0.0, r"epsilon \(--epsilon\): must be at least 1e-06"),
    ("use_cache", "yes", r"use_cache \(--no-cache\): must be true or false"),
    ("workers", 0, r"workers \(--workers\): must be at least 1"),
])
def test_a_bad_value_is_one_error_type_naming_the_setting_and_its_option(name, value, message):
    with pytest.raises(SettingError, match=message) as e:
        spec.check(name, value)
    assert isinstance(e.value, DeliftError) and isinstance(e.value, ValueError)


def test_the_model_help_names_every_packaged_model():
    from delift_core.lm.models import PACKAGED_MODELS

    assert all(alias in spec.get("model").help for alias in PACKAGED_MODELS)
    assert spec.default("model") in PACKAGED_MODELS


def test_defaults_and_optional_values():
    assert spec.check("neighbour_random", None) == 4  # None takes the default ...
    assert spec.check("neighbours", None) is None  # ... unless None means "off"
    assert spec.check("neighbours", "7") == 7
    assert spec.check_all({"seed": 3}, ["selection"]) == {
        "diagonal": "max", "verify_rounds": 0, "verify_explore": 0.0, "method": "lazy",
        "epsilon": 0.01, "seed": 3}
    with pytest.raises(SettingError, match="unknown setting"):
        spec.check_all({"neighbors": 3})


def test_the_engine_checks_settings_itself(tmp_path):
    pool = load_dataset("demo:pool").subset(range(12))
    with pytest.raises(SettingError, match="neighbours"):
        compute_kernels(pool, kind="embedding", neighbours=0)
    with pytest.raises(SettingError, match="target_direction"):
        compute_kernels(pool, kind="embedding", target_direction="sideways")
    with pytest.raises(SettingError, match="diagonal"):
        Kernels("utility", pool=np.eye(3, dtype=np.float32), diagonal="middle")
    with pytest.raises(SettingError, match="kernel"):
        compute_kernels(pool, kind="bm25")


def test_a_cli_error_names_the_option(tmp_path, capsys):
    code = main(["select", "--pool", "demo:pool", "--kernel", "embedding", "--neighbours", "5",
                 "--neighbour-random", "-1", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "neighbour_random (--neighbour-random): must be at least 0" in capsys.readouterr().err


SPARSE = ["--pool", "demo:pool", "--kernel", "embedding", "--neighbours", "5",
          "--neighbour-random", "3"]


def _selected(folder: Path) -> list[str]:
    return json.loads((folder / "selection.json").read_text())["selected_ids"]


def test_select_seed_never_changes_the_sparse_kernel(tmp_path, monkeypatch):
    """`delift kernel` and `delift select --seed 5` on the same pool and options: the same sparse
    kernel and the same FL selection (the random columns have their own --neighbour-seed)."""
    import delift_core.cli.select_cmds as select_cmds

    used = []
    real_select = select_cmds.select
    monkeypatch.setattr(select_cmds, "select",
                        lambda pool, obj, kernels, *a, **k: used.append(kernels)
                        or real_select(pool, obj, kernels, *a, **k))
    assert main(["kernel", *SPARSE, "--out", str(tmp_path / "k")]) == 0
    assert main(["select", *SPARSE, "--seed", "5", "--objective", "fl", "--budget", "20",
                 "--out", str(tmp_path / "s5")]) == 0
    assert main(["select", "--pool", "demo:pool", "--kernel", str(tmp_path / "k"),
                 "--seed", "0", "--objective", "fl", "--budget", "20",
                 "--out", str(tmp_path / "from_folder")]) == 0
    saved = load_kernels(tmp_path / "k", load_dataset("demo:pool")).pool
    computed = used[0].pool
    assert (saved != computed).nnz == 0 and saved.nnz == computed.nnz
    assert _selected(tmp_path / "s5") == _selected(tmp_path / "from_folder")
    # the neighbour seed is what moves the random columns, and it is recorded
    assert main(["select", *SPARSE, "--neighbour-seed", "1", "--objective", "fl", "--budget",
                 "20", "--out", str(tmp_path / "ns1")]) == 0
    assert (used[-1].pool != computed).nnz > 0
    assert used[-1].meta.sparse["neighbour_seed"] == 1 and used[0].meta.sparse["neighbour_seed"] == 0
    assert used[-1].meta.settings["neighbour_seed"] == 1


def test_an_older_kernel_folder_loads_into_kernel_meta(tmp_path):
    """A version-1 kernel_meta.json (no version, flat) loads into the same typed shape a computed
    kernel has; a version-1 loaded meta (nested under "computed") reads the same."""
    pool = load_dataset("demo:pool").subset(range(6))
    target = load_dataset("demo:target").subset(range(2))
    rng = np.random.default_rng(0)
    np.save(tmp_path / "kernel_pool.npy", rng.random((6, 6), dtype=np.float32))
    np.save(tmp_path / "kernel_target.npy", rng.random((2, 6), dtype=np.float32))
    v1 = {"kind": "utility", "pool_ids": pool.ids, "pool_hashes": row_hashes(pool),
          "target_ids": target.ids, "target_hashes": row_hashes(target),
          "row_hash": "sha256 ...", "pool": {"shape": [6, 6], "pairs_computed": 36,
                                              "d_plain": [0.5] * 6},
          "target_direction": "reference", "seconds": 1.5}
    (tmp_path / "kernel_meta.json").write_text(json.dumps(v1))
    k = load_kernels(tmp_path, pool, target=target)
    assert isinstance(k.meta, KernelMeta) and k.meta.loaded
    assert k.meta.kind == "utility" and k.meta.ids["pool"] == pool.ids
    assert k.meta.target_direction == "reference" and k.meta.seconds == 1.5
    assert k.meta.roles["pool"]["pairs_computed"] == 36
    assert k.meta["pool"]["d_plain"] == [0.5] * 6  # the mapping reads the flat record
    assert k.meta.source == {"file": str(tmp_path / "kernel_pool.npy"), "trusted": False}
    nested = KernelMeta.from_json({"kind": "file", "pool_file": "x.npy", "trusted": True,
                                   "computed": v1})
    assert nested.with_(source=k.meta.source) == k.meta.with_(source=k.meta.source)
    # computed and loaded kernels write and read one shape
    computed = compute_kernels(pool, kind="embedding", neighbours=SparseSpec(3, 1, 2))
    again = KernelMeta.from_json(json.loads(json.dumps(computed.meta.to_json())))
    assert again == computed.meta and again.sparse == {"neighbours": 3, "random_neighbours": 1,
                                                       "neighbour_seed": 2}


def test_each_default_lives_in_the_spec_only():
    """The literal defaults this issue found repeated appear nowhere else in the code."""
    code = [p for p in (ROOT / "delift_core").rglob("*.py") if p.name != "settings.py"]
    code += list((ROOT / "studio").glob("*.py")) + list((ROOT / "pages").glob("*.py"))
    patterns = [r"= *\"helps-target\"", r"or DEFAULT_TARGET_DIRECTION", r"DEFAULT_RANDOM",
                r"neighbour_random\", *4\)", r"neighbour_random: int = 4",
                r"\(\"reference\", \"max\", \"rowmax\"\)", r"DEFAULT_DIAGONAL = "]
    for p in code:
        text = p.read_text()
        for pat in patterns:
            assert not re.search(pat, text), f"{p.relative_to(ROOT)}: {pat}"


def test_a_setting_added_to_the_spec_reaches_the_engine_from_the_cli(tmp_path, monkeypatch,
                                                                      capsys):
    """embed_batch_size was added as a spec entry plus its use in the builder only: the CLI
    option, the check and the plumbing came from the spec."""
    import delift_core.kernels.builder as builder

    seen = []
    real = builder.embed_rows
    monkeypatch.setattr(builder, "embed_rows",
                        lambda *a, **k: seen.append(k["batch_size"]) or real(*a, **k))
    assert main(["kernel", "--pool", "demo:pool", "--kernel", "embedding", "--embed-batch-size",
                 "7", "--out", str(tmp_path / "k")]) == 0
    assert seen == [7]
    assert main(["kernel", "--pool", "demo:pool", "--kernel", "embedding", "--embed-batch-size",
                 "0", "--out", str(tmp_path / "k2")]) == 2
    assert "embed_batch_size (--embed-batch-size): must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("value", [float("nan"), "nan", float("inf"), "-inf"])
def test_a_number_that_is_not_finite_is_refused_by_name(value):
    """NaN passes every bound check (each comparison is false) and once reached the greedy or
    the verification as a traceback; infinities are no setting's value either."""
    for name in ("verify_explore", "epsilon", "verify_rounds"):
        with pytest.raises(SettingError, match=name):
            spec.check(name, value)


def test_the_cli_refuses_verifying_a_method_without_a_kernel_before_any_work(tmp_path, capsys,
                                                                             monkeypatch):
    import delift_core.lm.models as models

    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("model loaded"))
    code = main(["select", "--pool", "demo:pool", "--objective", "longest", "--kernel",
                 "utility", "--learned", "--verify-rounds", "2", "--out", str(tmp_path / "o")])
    assert code == 2 and not (tmp_path / "o").exists()
    assert "longest selects without a kernel: drop --verify-rounds" in capsys.readouterr().err
