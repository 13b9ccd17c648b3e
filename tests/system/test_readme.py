"""README's two commands are what a new user runs, and CI runs exactly the test command."""

import pathlib
import re

import pytest

pytestmark = pytest.mark.system

ROOT = pathlib.Path(__file__).resolve().parents[2]


def commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    head = text.split("## Using it")[0]
    return re.findall(r"```sh\n(.+?)\n```", head, re.S)


def test_readme_starts_with_the_demo_and_the_test_command():
    demo, tests = commands()
    assert demo.endswith("python -m hybrid_actors demo --seconds 30")
    assert tests.endswith("&& python -m pytest")
    assert demo.split("&& python -m")[0] == tests.split("&& python -m")[0]  # same set-up


def test_ci_runs_exactly_the_readme_test_command():
    test_command = commands()[1].rsplit("&& ", 1)[1]
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    runs = [line for line in script if line and not line.startswith("#") and "pytest" in line]
    assert runs == [test_command]
    assert "pip install --quiet -e '.[dev]'" in (ROOT / ".ci" / "run").read_text()
