"""Every `delift` command in the README's bash blocks runs as written, except those named in
SKIP with the reason (model passes, a cluster, a user's own file): a changed option or a stale
example fails here. They run in order in a fresh folder beside ../shared, as the README's
"run from the project folder" says, so later examples find the outputs of earlier ones."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SKIP = {
    "--kernel utility": "the causal LM's passes (minutes; the utility kernel has its own tests)",
    "delift kernel --pool demo:pool --limit": "the default (utility) kernel: model passes",
    "--kernel out/kernel": "reads the utility kernel of a skipped example",
    "--kernel out/learned": "verifies the learned kernel of a skipped example (model passes)",
    "--objective ifd": "IFD: two model passes a row (tests/test_row_scores.py)",
    "delift evaluate": "the evaluation runs the causal LM (tests/test_evaluate.py)",
    "--backend ray": "a Ray cluster (tests/test_ray_backend.py)",
    "my_trl_data.jsonl": "the user's own file",
    "data.jsonl": "the user's own file",
}


def readme_commands() -> list[str]:
    """The `delift ...` commands of the README's bash blocks, continuation lines joined and
    trailing comments removed."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("delift "):
                out.append(re.sub(r"\s+#.*$", "", line))
    return out


def test_the_readme_has_examples_and_every_skip_still_matches_one() -> None:
    cmds = readme_commands()
    assert len(cmds) >= 15, cmds
    for pattern in SKIP:
        assert any(pattern in c for c in cmds), f"SKIP entry {pattern!r} matches no example"


def test_every_fast_readme_example_runs_as_written(tmp_path: Path) -> None:
    shared = ROOT.parent / "shared"
    if not (shared / "data").exists():
        pytest.skip(f"{shared} is absent")
    work = tmp_path / "project"
    work.mkdir()
    (tmp_path / "shared").symlink_to(shared)  # ../shared, as beside the project
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    ran = []
    for cmd in readme_commands():
        if any(pattern in cmd for pattern in SKIP):
            continue
        run = subprocess.run(shlex.split(cmd), cwd=work, env=env, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, f"README example failed: {cmd}\n{run.stderr[-2000:]}"
        ran.append(cmd)
    assert len(ran) >= 10, ran
    assert (work / "out" / "fl" / "report.html").exists()  # `delift report out/fl` wrote it
