"""The README's example agent and profile, taken verbatim from README.md and run through a daemon."""
from __future__ import annotations

import os
import re

import pytest

from conftest import REPO
from sunsetd.client import RemoteError

pytestmark = pytest.mark.slow


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_readme_starts_with_the_two_commands():
    first = blocks("sh")[0]
    assert first.splitlines()[0].startswith("make run") and first.splitlines()[1].startswith("make test")


def test_readme_example_agent_works(tmp_path, start_daemon):
    (agent_code,) = [b for b in blocks("python") if "class WordCounter" in b]
    (profile,) = [b for b in blocks("yaml") if "myagents:WordCounter" in b]
    assert len(agent_code.strip().splitlines()) <= 16
    (tmp_path / "myagents.py").write_text(agent_code)
    (tmp_path / "words.yaml").write_text(profile)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    d = start_daemon(tmp_path / "words.yaml", env=env)
    assert d.call("WordCounter", "count", "to be or not to be") == {"words": 6, "total": 6}
    assert d.call("WordCounter", "count", "again") == {"words": 1, "total": 7}
    with pytest.raises(RemoteError) as info:
        d.call("WordCounter", "count", 42)
    assert info.value.code == "bad_request" and info.value.message == "count needs a string"
    assert d.call("WordCounter", "ping") == "pong"


def test_readme_links_point_inside_the_repository():
    """Found by a new user: the profile format was linked to a file outside the repository."""
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert links, "no links found: the pattern is wrong"
    for link in links:
        if re.match(r"https?://", link):
            continue
        target = (REPO / link).resolve()
        assert target.is_relative_to(REPO) and target.exists(), f"README links to {link}"
