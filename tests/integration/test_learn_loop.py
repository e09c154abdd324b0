"""`nomoat learn` end to end on a fresh NOMOAT_HOME with the bundled model: every stage runs for real, the report
shows the four configurations, and `ask` afterwards answers with the learned model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TEAMS = ("billing", "search", "storage", "mobile", "payments", "identity", "mail", "maps", "video", "backup",
         "metrics", "chat")  # fmt: skip


def _nomoat(home: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NOMOAT_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "nomoat", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)  # fmt: skip


def test_learn_runs_the_loop_and_ask_then_uses_the_learned_model(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, team in enumerate(TEAMS):
        (docs / f"{team}.md").write_text(
            f"# The {team} team\n\nThe {team} team deploys its service every {['Monday', 'Friday'][i % 2]} at "
            f"{8 + i}:00. Its on-call rota changes every {i + 2} weeks, and its dashboard lives at "
            f"dash/{team}.\n\n## Releases\n\nA release of {team} needs two approvals and passes the "
            f"{team}-smoke test suite, which takes about {10 + i} minutes.\n"
        )
    home = tmp_path / "home"
    proc = _nomoat(home, "learn", str(docs), "--kb", "notes", "--time", "3m", "--json")
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)
    assert state["finished"] and set(state["stages"]) == {"ingest", "adapt", "data", "tune", "export", "eval"}
    assert state["stages"]["ingest"]["added"] == len(TEAMS) and state["stages"]["data"]["train"] > 0
    assert "plan for the" in proc.stderr and "[6/6] eval" in proc.stderr
    assert "off in learn" in state["stages"]["adapt"]["skipped"]  # LearnConfig.adapt_share is 0
    rows = [json.loads(line) for line in Path(state["stages"]["data"]["data"]).read_text().splitlines()]
    assert all(r["meta"]["format"] == "rag" and r["messages"][0]["role"] == "system" for r in rows)

    learned = Path(state["learned_model"])
    assert learned.is_file() and learned.suffix == ".gguf"
    report = Path(state["report"]).read_text()
    for configuration in ("base", "tuned", "base+RAG", "tuned+RAG"):
        assert f"<th>{configuration}</th>" in report
    info = json.loads(_nomoat(home, "kb", "info", "notes", "--json").stdout)
    assert info["learned_model"] == str(learned)

    ask = _nomoat(home, "ask", "When does the billing team deploy its service?", "--kb", "notes", "--json")
    assert ask.returncode == 0, ask.stderr
    assert json.loads(ask.stdout)["model"] == learned.stem  # the learned model, not the bundled one
    bundled = _nomoat(home, "ask", "When does the billing team deploy?", "--kb", "notes", "--model", "default",
                      "--json")  # fmt: skip
    assert json.loads(bundled.stdout)["model"] != learned.stem
