"""A studio served to a team: the data root confines local paths, hub ids only when allowed,
the allow-list of sign-in, and the server-wide model queue (studio/served.py, studio/jobs.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from studio import jobs
from studio.served import (AccessRefused, ServedSettings, data_source, model_source,
                           served_settings, user_allowed)

ROOT = Path(__file__).resolve().parents[1]
POOL = '{"prompt": "What is 2+2?", "response": "4"}\n{"prompt": "Capital of France?", ' \
       '"response": "Paris"}\n'


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """A data root with one pool file, and a secret file beside it (outside the root)."""
    r = tmp_path / "root"
    (r / "team").mkdir(parents=True)
    (r / "team" / "pool.jsonl").write_text(POOL)
    (tmp_path / "secret.jsonl").write_text('{"prompt": "the other team", "response": "s3cret"}\n')
    return r


def served(root: Path, **kw) -> ServedSettings:
    return ServedSettings(data_root=Path(os.path.realpath(root)), allow_hub=False, **kw)


def test_a_local_run_loads_what_is_typed(tmp_path: Path) -> None:
    local = ServedSettings()
    assert not local.served and local.allow_hub
    assert data_source("/etc/passwd", local) == "/etc/passwd"
    assert data_source(" tatsu-lab/alpaca ", local) == "tatsu-lab/alpaca"


@pytest.mark.parametrize("text", ["/etc/passwd", "../secret.jsonl", "team/../../secret.jsonl",
                                  "~/.bashrc", "/etc", "link.jsonl", "linkdir",
                                  "folder_with_link"])
def test_served_mode_refuses_paths_out_of_the_root_and_names_the_root(root: Path,
                                                                      text: str) -> None:
    (root / "link.jsonl").symlink_to(root.parent / "secret.jsonl")
    (root / "linkdir").symlink_to(root.parent)
    (root / "folder_with_link").mkdir()
    (root / "folder_with_link" / "data.jsonl").symlink_to(root.parent / "secret.jsonl")
    with pytest.raises(AccessRefused) as e:
        data_source(text, served(root))
    msg = str(e.value)
    assert str(os.path.realpath(root)) in msg, msg
    assert "s3cret" not in msg and "root:x:" not in msg  # never what a file holds


def test_served_mode_loads_inside_the_root_relative_or_absolute(root: Path) -> None:
    from delift_core.data.dataset import load_dataset

    settings = served(root)
    real = os.path.realpath(root / "team" / "pool.jsonl")
    assert data_source("team/pool.jsonl", settings) == real
    assert data_source(str(root / "team" / "pool.jsonl"), settings) == real
    assert data_source("./team/../team/pool.jsonl", settings) == real
    assert load_dataset(data_source("team/pool.jsonl", settings)).responses == ["4", "Paris"]
    assert data_source("demo:pool", settings) == "demo:pool"
    with pytest.raises(AccessRefused, match="no file or folder 'team/none.jsonl' in the data root"):
        data_source("team/none.jsonl", settings)


def test_hub_ids_only_when_allowed_and_never_a_server_path(root: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AccessRefused, match="turned off on this server"):
        data_source("tatsu-lab/alpaca", served(root))
    allowed = ServedSettings(data_root=Path(os.path.realpath(root)), allow_hub=True)
    assert data_source("tatsu-lab/alpaca", allowed) == "tatsu-lab/alpaca"
    monkeypatch.chdir(root.parent)  # a "hub id" that names a file beside the server: refused
    (root.parent / "owner").mkdir()
    (root.parent / "owner" / "name").write_text("x")
    with pytest.raises(AccessRefused):
        data_source("owner/name", allowed)
    # models: the packaged ones always, a hub id only when allowed, folders inside the root
    assert model_source("gemma-3-270m", settings=served(root)) == "gemma-3-270m"
    assert model_source("all-MiniLM-L6-v2", embedder=True, settings=served(root)) == \
        "all-MiniLM-L6-v2"
    with pytest.raises(AccessRefused, match="models from the Hugging Face hub are turned off"):
        model_source("Qwen/Qwen2.5-0.5B", settings=served(root))
    with pytest.raises(AccessRefused, match="outside the data root"):
        model_source(str(root.parent), settings=served(root))
    assert model_source("team", settings=served(root)) == os.path.realpath(root / "team")


def test_settings_come_from_the_environment_and_bad_values_are_named(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIFT_DATA_ROOT", str(root))
    monkeypatch.setenv("DELIFT_ALLOWED_USERS", "ann@example.com, @team.org")
    monkeypatch.setenv("DELIFT_MODEL_JOBS", "2")
    s = served_settings()
    assert s.served and not s.allow_hub and s.model_jobs == 2
    assert s.allowed_users == ("ann@example.com", "@team.org")
    monkeypatch.setenv("DELIFT_ALLOW_HUB", "maybe")
    with pytest.raises(AccessRefused, match="DELIFT_ALLOW_HUB must be 1 or 0"):
        served_settings()
    monkeypatch.setenv("DELIFT_ALLOW_HUB", "1")
    monkeypatch.setenv("DELIFT_MODEL_JOBS", "0")
    with pytest.raises(AccessRefused, match="DELIFT_MODEL_JOBS must be a whole number"):
        served_settings()
    monkeypatch.setenv("DELIFT_MODEL_JOBS", "1")
    monkeypatch.setenv("DELIFT_DATA_ROOT", str(root / "missing"))
    with pytest.raises(AccessRefused, match="is not a folder"):
        served_settings()


def test_the_allow_list_takes_addresses_and_domains() -> None:
    allowed = ("ann@example.com", "@team.org")
    assert user_allowed("Ann@Example.com", allowed)
    assert user_allowed("bob@team.org", allowed)
    assert not user_allowed("bob@example.com", allowed)
    assert not user_allowed("eve@team.org.evil.com", allowed)
    assert not user_allowed("", allowed) and not user_allowed(None, allowed)
    assert user_allowed("anyone@anywhere.net", ())


def test_the_data_page_refuses_a_path_outside_the_root_and_shows_nothing_of_it(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIFT_DATA_ROOT", str(root))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/1_Data.py")
    at.run()
    at.radio(key="p_src_pool").set_value("path").run()
    for text in ("/etc/passwd", str(root.parent / "secret.jsonl"), "../secret.jsonl"):
        at.text_input(key="p_path_pool").input(text).run()
        at.button(key="load_path_pool").click().run()
        assert not at.exception
        errors = [e.value for e in at.error]
        assert any(str(os.path.realpath(root)) in e and "outside the data root" in e
                   for e in errors), errors
        shown = " ".join(str(x.value) for x in [*at.markdown, *at.error, *at.caption])
        assert "s3cret" not in shown and "root:x:" not in shown
        assert at.session_state["pool"] is None
        assert not at.checkbox(key="p_map_on_pool").value
    at.text_input(key="p_path_pool").input("team/pool.jsonl").run()
    at.button(key="load_path_pool").click().run()
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["pool"].responses == ["4", "Paris"]
    at.radio(key="p_src_pool").set_value("hub").run()
    at.text_input(key="p_hub_pool").input("tatsu-lab/alpaca").run()
    at.button(key="load_hub_pool").click().run()
    assert any("turned off on this server" in e.value for e in at.error)


# ------------------------------------------------------------------------------------------
# The model queue


class _Sleeper(jobs.Job):
    """A model job that runs until released (the queue's behaviour, without a model)."""

    def __init__(self, name: str, log: list, **kw) -> None:
        super().__init__(**kw)
        self.name, self.log, self.go = name, log, threading.Event()

    def fraction(self) -> float:
        return 0.0

    def work(self) -> str:
        self.log.append(self.name)
        self.go.wait(30)
        return self.name


def _until(cond, timeout: float = 10.0) -> None:
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


def test_model_jobs_queue_in_order_and_a_queued_one_can_be_cancelled() -> None:
    reg, log = jobs.JobRegistry(model_jobs=1), []
    a = reg.start("session-a", _Sleeper("a", log))
    _until(lambda: log == ["a"])
    b = reg.start("session-b", _Sleeper("b", log))
    c = reg.start("session-c", _Sleeper("c", log))
    _until(lambda: b.place() == (1, 2) and c.place() == (2, 2))
    assert b.status == c.status == "queued" and b.running
    b.cancel.set()  # a queued job leaves at once, without running
    _until(lambda: b.status == "cancelled")
    assert c.place() == (1, 1) and log == ["a"]
    assert reg.get("session-c", "job") is c and reg.get("session-a", "job") is a
    a.go.set()
    _until(lambda: log == ["a", "c"])
    assert a.status == "done" and a.result == "a" and c.place() is None
    c.go.set()
    _until(lambda: c.status == "done")


def test_a_closed_tabs_queued_job_leaves_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "GONE_AFTER_S", 0.3)
    reg, log = jobs.JobRegistry(model_jobs=1), []
    a = reg.start("a", _Sleeper("a", log))
    _until(lambda: log == ["a"])
    open_tab = {"b": True}
    b = reg.start("b", _Sleeper("b", log), alive=lambda: open_tab["b"])
    _until(lambda: b.status == "queued")
    time.sleep(0.5)
    assert b.status == "queued"  # an open tab keeps its place however long it waits
    open_tab["b"] = False
    _until(lambda: b.status == "cancelled")
    a.go.set()
    _until(lambda: a.status == "done")
    assert log == ["a"]


def test_a_signed_in_user_has_one_model_job_at_a_time_across_tabs() -> None:
    """One person could fill the shared queue from several tabs (each tab is a session); now a
    second model job of the same signed-in user is refused by name, starting or cancelling
    nothing, while other users and the same tab's replacement go on as before."""
    reg, log = jobs.JobRegistry(model_jobs=1), []
    a = reg.start("tab-1", _Sleeper("a", log), owner="ann@team.org")
    _until(lambda: log == ["a"])
    with pytest.raises(jobs.QueueRefused, match=r"ann@team.org already has a model job "
                                                r"\(job, running\)"):
        reg.start("tab-2", _Sleeper("b", log), owner="ann@team.org")
    assert reg.get("tab-2", "job") is None and a.running and not a.cancel.is_set()
    bob = reg.start("tab-3", _Sleeper("bob", log), owner="bob@team.org")
    _until(lambda: bob.status == "queued")
    again = reg.start("tab-1", _Sleeper("a2", log), owner="ann@team.org")  # replaces her own
    _until(lambda: a.cancel.is_set())
    assert reg.get("tab-1", "job") is again
    a.go.set()
    _until(lambda: log == ["a", "bob"])
    bob.go.set()
    _until(lambda: log == ["a", "bob", "a2"])
    again.go.set()
    _until(lambda: again.status == "done")
    reg.start("tab-2", _Sleeper("b", log), owner="ann@team.org").go.set()  # hers ended: taken


def test_a_users_unreachable_or_cancelled_job_does_not_lock_them_out() -> None:
    """A reload gives a new session: the old one's running job can no longer be seen or
    cancelled, so it is cancelled when its owner starts another; a job cancelled already (still
    finishing its batch) does not count either. The address is compared without case."""
    reg, log = jobs.JobRegistry(model_jobs=1), []
    tab = {"open": True}
    a = reg.start("tab-1", _Sleeper("a", log), alive=lambda: tab["open"], owner="Ann@team.org")
    _until(lambda: log == ["a"])
    with pytest.raises(jobs.QueueRefused):
        reg.start("tab-2", _Sleeper("b", log), owner="ann@team.org")
    tab["open"] = False  # reloaded: tab-1's session is gone
    b = reg.start("tab-2", _Sleeper("b", log), owner="ann@team.org")
    assert a.cancel.is_set() and b.running
    b.cancel.set()  # she cancelled b; it is still stopping (status running)
    c = reg.start("tab-3", _Sleeper("c", log), owner="ann@team.org")
    assert b.running and c.running
    for j in (a, b, c):
        j.go.set()
    _until(lambda: not (a.running or b.running or c.running))


def test_a_replaced_job_holding_the_slot_is_not_counted_as_waiting() -> None:
    reg, log = jobs.JobRegistry(model_jobs=1, max_queued=2), []
    a = reg.start("s0", _Sleeper("a", log))
    _until(lambda: log == ["a"])
    waiting = [reg.start(f"s{i}", _Sleeper(str(i), log)) for i in (1, 2)]
    _until(lambda: all(j.status == "queued" for j in waiting))
    with pytest.raises(jobs.QueueRefused, match="2 jobs waiting"):  # the slot stays a's until
        reg.start("s0", _Sleeper("a2", log))  # it stops: a replacement would be a third
    for j in (a, *waiting):
        j.go.set()
    _until(lambda: not any(j.running for j in (a, *waiting)))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_job_whose_thread_ends_any_other_way_is_never_left_running() -> None:
    class Stopped(_Sleeper):
        def work(self):
            raise KeyboardInterrupt  # a BaseException: not caught as the job's error

    reg = jobs.JobRegistry(model_jobs=1)
    job = reg.start("s", Stopped("x", []), owner="ann@team.org")
    job.thread.join(5)
    assert job.status == "error" and not job.running and job.queue.active == set()
    reg.start("t", _Sleeper("y", []), owner="ann@team.org").go.set()  # she is not locked out


def test_a_full_model_queue_refuses_a_new_job_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without sign-in no one can be told apart: the queue itself is bounded."""
    reg, log = jobs.JobRegistry(model_jobs=1, max_queued=2), []
    started = [reg.start(f"s{i}", _Sleeper(str(i), log)) for i in range(3)]  # 1 runs, 2 wait
    _until(lambda: [j.status for j in started][1:] == ["queued", "queued"])
    with pytest.raises(jobs.QueueRefused, match=r"queue is full \(2 jobs waiting, "
                                                r"DELIFT_MAX_QUEUED = 2\)"):
        reg.start("s3", _Sleeper("3", log))
    started[2].cancel.set()  # one leaves: a new one is taken
    _until(lambda: started[2].status == "cancelled")
    late = reg.start("s3", _Sleeper("3", log))
    for j in (*started, late):
        j.go.set()
    _until(lambda: late.status == "done")
    monkeypatch.setenv("DELIFT_MAX_QUEUED", "0")
    with pytest.raises(AccessRefused, match="DELIFT_MAX_QUEUED must be a whole number"):
        served_settings()


def test_two_slots_run_two_jobs_and_embedding_kernels_never_queue() -> None:
    reg, log = jobs.JobRegistry(model_jobs=2), []
    a, b = reg.start("a", _Sleeper("a", log)), reg.start("b", _Sleeper("b", log))
    _until(lambda: sorted(log) == ["a", "b"])
    kernel = jobs.KernelJob(config={"kind": "embedding"}, pool=None, target=None,
                            existing=None, estimate=None)
    assert not kernel.needs_model()
    assert jobs.KernelJob(config={"kind": "utility"}, pool=None, target=None, existing=None,
                          estimate=None).needs_model()
    a.go.set(), b.go.set()
    _until(lambda: a.status == b.status == "done")


# ------------------------------------------------------------------------------------------
# A review of the served studio (2026-12-05): each case once got through


def test_a_bare_name_is_never_a_hub_id_on_a_served_studio(root: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``datasets`` reads a bare ``text``, ``json``, ``csv`` or ``parquet`` as its own loader
    over the server's working folder: served, a hub id must be owner/name."""
    allowed = ServedSettings(data_root=Path(os.path.realpath(root)), allow_hub=True)
    monkeypatch.chdir(root.parent)  # where the server runs: secret.jsonl lies here
    for name in ("text", "json", "csv", "parquet"):
        with pytest.raises(AccessRefused, match=f"no file or folder '{name}' in the data root"):
            data_source(name, allowed)
    with pytest.raises(AccessRefused, match="no file or folder 'gpt2' in the data root"):
        model_source("gpt2", settings=allowed)
    assert data_source("tatsu-lab/alpaca", allowed) == "tatsu-lab/alpaca"


@pytest.mark.parametrize("text", ["x" * 300, "team/po\0ol.jsonl"])
def test_a_name_the_file_system_cannot_look_up_is_refused_by_name(root: Path, text: str) -> None:
    for check in (lambda: data_source(text, served(root)),
                  lambda: model_source(text, settings=served(root)),
                  lambda: model_source(text, embedder=True, settings=served(root))):
        with pytest.raises(AccessRefused, match="is not a path or hub id this studio can use"):
            check()


def test_an_address_the_provider_did_not_verify_is_never_allowed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import studio.served as served_module

    class User(dict):
        is_logged_in = True

    monkeypatch.setenv("DELIFT_ALLOWED_USERS", "@team.org")
    for verified, ok in ((False, False), (True, True), (None, True)):
        claims = {"email": "ann@team.org"} | ({} if verified is None else
                                             {"email_verified": verified})
        monkeypatch.setattr(served_module, "st", SimpleNamespace(user=User(claims)))
        assert served_module._signed_in_and_allowed() == (ok, "ann@team.org")


def test_the_sentence_embedder_of_every_page_is_checked(root: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedder the Audit, Explore and Download pages embed with is checked as the Kernel
    page's is (it was loaded from any path typed into the box)."""
    from test_app import compute, goto, load_demo, new_app

    monkeypatch.setenv("DELIFT_DATA_ROOT", str(root))
    monkeypatch.setenv("DELIFT_CACHE_DIR", str(root.parent / "cache"))
    at = compute(load_demo(new_app()), "embedding")  # the packaged embedder: allowed
    at.session_state["p_embedder"] = str(root.parent)  # typed into the Kernel page's box
    goto(at, "8_Audit")
    assert any("outside the data root" in e.value for e in at.error), [e.value for e in at.error]


def test_a_served_studio_offers_no_ray_and_bounds_what_a_page_asks_for(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from delift_core import settings as spec
    from delift_core.evaluation.settings import EvaluationError
    from delift_core.evaluation.subsets import parse_int_list
    from studio import state

    monkeypatch.setenv("DELIFT_DATA_ROOT", str(root))
    with pytest.raises(AccessRefused, match="Ray is not offered on a shared studio"):
        state.start_kernel_job({"kind": "utility", "backend": "ray"}, None, None, None, None)
    with pytest.raises(ValueError, match="at most 256"):
        spec.check("neighbour_random", 10_000_000)
    for name in ("max_field_tokens", "max_response_tokens"):  # a pass's memory grows with them
        with pytest.raises(ValueError, match="at most 8192"):
            spec.check(name, 1_000_000)
    with pytest.raises(EvaluationError, match="at most 100"):
        parse_int_list(",".join(map(str, range(101))), "seeds")
    assert parse_int_list(",".join(map(str, range(100))), "seeds") == list(range(100))


def test_a_subset_folders_manifest_source_is_checked_before_it_is_read(
        root: Path, tmp_path: Path) -> None:
    """An Evaluate subset folder's manifest names its pool; that source goes through the same
    check as a typed one before anything is read (it was read whole, then checked)."""
    import json

    from delift_core.evaluation.subsets import load_subset

    folder = root / "team" / "sel"
    folder.mkdir()
    (folder / "selected.jsonl").write_text(POOL)
    (folder / "selection.json").write_text(json.dumps({"objective": "fl", "budget": 2}))
    seen = []

    def resolve(text: str) -> str:
        seen.append(text)
        return data_source(text, served(root))

    secret = str(root.parent / "secret.jsonl")
    (folder / "manifest.json").write_text(json.dumps({"inputs": {"pool": {"source": secret}}}))
    sub, pool = load_subset(folder, resolve=resolve)
    assert seen == [secret] and pool is None and len(sub.data) == 2


def test_a_sparse_kernel_as_large_as_a_dense_one_is_refused_before_any_work() -> None:
    from delift_core.data.dataset import load_dataset
    from delift_core.errors import KernelError
    from delift_core.kernels.builder import compute_kernels

    pool = load_dataset("demo:pool")
    with pytest.raises(KernelError, match=r"is 57,600 pairs, .* lower --neighbours"):
        compute_kernels(pool, kind="embedding", neighbours=240, max_dense_bytes=2**20,
                        embedder=object())  # refused before the embedder is ever used


def test_an_account_without_a_verified_address_keeps_no_decisions_file(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Decisions files are keyed by the signed-in address: an account without one (or with one
    the provider did not verify) would read and write another's, or the local run's."""
    from types import SimpleNamespace

    import studio.decisions as decisions
    import studio.served as served_module

    class User(dict):
        is_logged_in = True

    monkeypatch.setattr(served_module, "auth_configured", lambda: True)
    for claims, want in (({"email": "ann@team.org"}, (True, "ann@team.org")),
                         ({"email": "ann@team.org", "email_verified": False},
                          (False, None)),
                         ({"sub": "123"}, (False, None))):
        monkeypatch.setattr(served_module, "st", SimpleNamespace(user=User(claims)))
        assert decisions._owner() == want
