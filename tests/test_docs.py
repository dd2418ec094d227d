"""The README and docs/: links that resolve, the tables that must match the code, and the tour.

The README's tour is run as written, against ``make run`` with its default settings, and each
command's output is compared with the lines the README shows under it.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flowagg.config import SETTINGS
from flowagg.web.openapi import openapi_document
from tests.conftest import WAIT_TIMEOUT
from tests.launch import MAKE_RUN, Launched

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, ROOT / "ARCHITECTURE.md", ROOT / "loadtest" / "README.md", *DOCS.glob("*.md")]
MANUAL = {"api", "configuration", "running", "durability", "scale-out", "performance", "testing"}

_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """``text`` without fenced blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's rules) gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _FENCE.sub("", path.read_text()), re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_slugs_follow_the_renderers_rules():
    assert slug("The page: `GET /`") == "the-page-get-"
    assert slug("Scale-out with Redis") == "scale-out-with-redis"
    assert slug("`POST /flows`") == "post-flows"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[ok](#here) [gone](missing.md) [bad](#nowhere)\n\n## Here\n")
    links = _LINK.findall(prose(page.read_text()))
    assert links == ["#here", "missing.md", "#nowhere"]
    assert anchors(page) == {"here"}


def test_the_manual_has_one_topic_a_file_each_opening_with_its_purpose():
    names = {p.stem for p in DOCS.glob("*.md")}
    assert names >= MANUAL
    for path in DOCS.glob("*.md"):
        lines = path.read_text().split("\n")
        assert lines[0].startswith("# "), path
        assert lines[1] == "" and lines[2] and not lines[2].startswith(("#", "|", "```")), path


def test_the_readme_is_a_guide():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert "make run" in section(text, "Two commands")
    assert "make test" in section(text, "Two commands")
    for title in ("A five-minute tour", "Three ways to keep the data", "Where to go next"):
        assert f"\n## {title}\n" in text
    linked = set(_LINK.findall(section(text, "Where to go next")))
    assert {f"docs/{name}.md" for name in MANUAL} <= linked


def test_the_store_modes_table_names_how_to_turn_each_on():
    rows = section(README.read_text(), "Three ways to keep the data")
    [turn_on] = [line for line in rows.splitlines() if line.startswith("| turn it on |")]
    assert "FLOWAGG_DATA_DIR" in turn_on and "FLOWAGG_REDIS_URL" in turn_on


def test_every_setting_is_documented_with_its_default():
    text = (DOCS / "configuration.md").read_text()
    rows = dict(re.findall(r"^\| `(FLOWAGG_\w+)` \| ([^|]+) \|", text, re.M))
    assert set(rows) == {s.name for s in SETTINGS}
    for setting in SETTINGS:
        shown = "unset" if setting.default is None else f"`{setting.default}`"
        assert rows[setting.name].startswith(shown), (setting.name, rows[setting.name])


def test_the_api_page_and_the_openapi_document_agree():
    table = section((DOCS / "api.md").read_text(), "Endpoints and their statuses")
    documented = {
        endpoint: set(statuses.replace(" ", "").split(","))
        for endpoint, statuses in re.findall(r"^\| `([A-Z]+ /[^`]*)` \| ([\d, ]+) \|$", table, re.M)
    }
    served = {
        f"{method.upper()} {path}": set(operation["responses"])
        for path, operations in openapi_document()["paths"].items()
        for method, operation in operations.items()
    }
    assert documented == served


# -- the tour, run as the README shows it ----------------------------------------------------

URL = "http://127.0.0.1:8080"


def tour_steps(text: str) -> list[tuple[str, str]]:
    """(command, expected output) for each command of the tour's shell blocks."""
    steps = []
    for block in re.findall(r"^```sh\n(.*?)^```", section(text, "A five-minute tour"), re.M | re.S):
        command: list[str] = []
        expected: list[str] = []
        for line in block.splitlines():
            if line.startswith("# "):
                expected.append(line[2:])
                continue
            if command and expected:
                steps.append(("\n".join(command), "\n".join(expected)))
                command, expected = [], []
            command.append(line)
        steps.append(("\n".join(command), "\n".join(expected)))
    return steps


def matches(shown: str, output: str) -> bool:
    """The output holds what the README shows: its pieces between "..." in order, whitespace
    and line breaks aside; a trailing "(NNN)" is the status, which the body does not hold."""
    shown = re.sub(r"\s+\(\d{3}\)$", "", shown, flags=re.M)
    flat = re.sub(r"\s+", "", output)
    position = 0
    for piece in re.split(r"\(?\.\.\.\)?", re.sub(r"\s+", "", shown)):
        found = flat.find(piece, position)
        if found < 0:
            return False
        position = found + len(piece)
    return True


def test_matches_reads_the_readmes_abbreviations():
    assert matches('{"a":1,\n "b":2}', '{"a":1,"b":2}\n')
    assert matches('{"a":1, ...}', '{"a":1,"b":2}')
    assert matches("x: 1 (...)\nfiles: 1", "x: 1 because\nfiles: 1\nmore")
    assert matches('{"error":"no"}    (400)', '{"error":"no"}')
    assert not matches('{"a":2}', '{"a":1}')
    assert not matches("files: 1\nx", "x\nfiles: 1")


def test_the_tour_has_every_step():
    commands = " ".join(command for command, _ in tour_steps(README.read_text()))
    for step in ("-X POST", "/flows?hour=", "/flows/top", "/flows/hours", "flowagg ship"):
        assert step in commands


@pytest.mark.skipif(shutil.which("curl") is None, reason="the tour uses curl")
def test_the_tour_answers_what_the_readme_shows(tmp_path):
    server = Launched(MAKE_RUN, {}).wait_serving()
    try:
        url = f"http://127.0.0.1:{server.port}"
        for command, shown in tour_steps(README.read_text()):
            command = command.replace(URL, url)
            command = command.replace(
                ".venv/bin/flowagg ship",
                f"{shlex.quote(sys.executable)} -m flowagg ship --url {url}"
                f" --state {shlex.quote(str(tmp_path / 'ship.state'))}",
            )
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=WAIT_TIMEOUT * 3,
            )
            assert done.returncode == 0, (command, done.stderr)
            output = done.stdout + done.stderr
            assert matches(shown, output), f"{command}\nshows:\n{shown}\nanswered:\n{output}"
    finally:
        server.stop()
