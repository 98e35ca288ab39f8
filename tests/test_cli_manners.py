"""The command line's manners: --version, -q / -v mapped to log levels, errors, missing extras."""

from __future__ import annotations

from dataclasses import replace
import logging
import subprocess
import sys

import pytest

from delift_core import cli
from delift_core.errors import DeliftError, MissingDependencyError, optional_import


def _noisy(args: object) -> int:
    """A stand-in command that logs at every level through a delift_core logger."""
    log = logging.getLogger("delift_core.noisy")
    log.debug("debug line")
    log.info("info line")
    log.warning("warning line")
    return 0


@pytest.mark.parametrize("flags, shown, hidden", [
    ([], ["info line", "warning line"], ["debug line"]),
    (["-q"], ["warning line"], ["info line", "debug line"]),
    (["--quiet"], ["warning line"], ["info line", "debug line"]),
    (["-v"], ["debug line", "info line", "warning line"], []),
    (["--verbose"], ["debug line", "info line", "warning line"], []),
])
def test_verbosity_flags_set_the_log_level(monkeypatch, capsys, flags, shown, hidden):
    monkeypatch.setitem(cli.COMMANDS, "inspect", replace(cli.COMMANDS["inspect"], run=_noisy))
    assert cli.main([*flags, "inspect", "demo:pool"]) == 0
    err = capsys.readouterr().err
    for line in shown:
        assert f"{line}\n" in err.splitlines(keepends=True)  # plain "%(message)s" lines
    for line in hidden:
        assert line not in err


def test_main_leaves_logging_as_it_found_it(monkeypatch, capsys):
    log = logging.getLogger("delift_core")
    before = (list(log.handlers), log.level)
    monkeypatch.setitem(cli.COMMANDS, "inspect", replace(cli.COMMANDS["inspect"], run=_noisy))
    cli.main(["-v", "inspect", "demo:pool"])
    cli.main(["inspect", "demo:pool"])
    assert (list(log.handlers), log.level) == before
    assert capsys.readouterr().err.count("info line") == 2  # one handler per run, not piling up


def test_quiet_inspect_still_prints_its_report(capsys):
    assert cli.main(["-q", "inspect", "demo:pool", "--rows", "1"]) == 0
    out, err = capsys.readouterr()
    assert "240 rows, layout 'alpaca'" in out and "--- id pool-0001" in out
    assert "rows kept" not in err  # the loader's debug line


def test_verbose_inspect_shows_the_loaders_debug_line(capsys):
    assert cli.main(["-v", "inspect", "demo:pool", "--rows", "0"]) == 0
    assert "240 of 240 rows kept, layout 'alpaca'" in capsys.readouterr().err


def test_quiet_and_verbose_together_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["-q", "-v", "inspect", "demo:pool"])
    assert e.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_errors_still_exit_2_with_a_message_when_quiet(capsys, tmp_path):
    assert cli.main(["-q", "inspect", str(tmp_path / "missing.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("delift: error: ")


def test_version_prints_the_package_version(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"delift {metadata.version('delift-studio')}"


def test_version_from_the_console_entry_point():
    run = subprocess.run([sys.executable, "-m", "delift_core", "--version"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("delift ")


def test_a_missing_optional_package_names_the_extra():
    with pytest.raises(MissingDependencyError) as e:
        optional_import("delift_no_such_module", "eval", "LoRA evaluation", package="no-such")
    assert isinstance(e.value, DeliftError) and isinstance(e.value, ImportError)
    assert str(e.value) == ("LoRA evaluation needs the package 'no-such', which is not installed; "
                            'install it with: pip install "delift-studio[eval]"')
