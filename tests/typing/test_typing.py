"""Type checkers see the real public API: ``mypy --strict`` accepts a typed bot
(``typed_usage.py``), the whole package (internals and the simulator too: a typed bot
that follows our imports meets no error) and ``scripts/`` (the example bot is what bot
authors copy; the benchmarks patch production code, so they must follow its signatures),
and refuses the wrong uses in ``misuse.py`` (so the check is not vacuous: nothing is
``Any``). Also: ``py.typed`` ships."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

pytestmark = pytest.mark.unit

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PACKAGE = ROOT / "hybrid_actors"
SCRIPTS = ROOT / "scripts"
#: the modules a bot imports from (the rest is internal: actors, transports, simulator)
PUBLIC = ["__init__.py", "config.py", "errors.py", "health.py", "notices.py", "state.py", "supervisor.py",
          "bridge/__init__.py", "bridge/stream.py", "protocol/frames.py"]


def mypy(tmp_path: pathlib.Path, *files: pathlib.Path, summary: bool = False) -> subprocess.CompletedProcess[str]:
    # errors are reported for the files named; the modules they import are analysed silently
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                           "--cache-dir", str(tmp_path / "mypy-cache"),
                           *([] if summary else ["--no-error-summary"]), *map(str, files)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)


def test_mypy_strict_accepts_the_whole_package(tmp_path):
    result = mypy(tmp_path, PACKAGE.relative_to(ROOT), summary=True)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = len(list(PACKAGE.rglob("*.py")))  # every module: none skipped, none excluded
    assert f"Success: no issues found in {checked} source files" in result.stdout, result.stdout


def test_mypy_strict_accepts_the_scripts(tmp_path):
    result = mypy(tmp_path, SCRIPTS.relative_to(ROOT), summary=True)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = len(list(SCRIPTS.glob("*.py")))  # every script, and bench_support, which they import
    assert f"Success: no issues found in {checked} source files" in result.stdout, result.stdout


def test_no_module_opts_out_of_the_type_check():
    # a bare ``# type: ignore`` on a module's first line, or an inline ``# mypy:`` setting,
    # would switch checks off that the tests above cannot see; each ignore names its code
    for path in [*PACKAGE.rglob("*.py"), *SCRIPTS.glob("*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            assert not re.search(r"#\s*mypy:|#\s*type:\s*ignore(?!\[)", line), f"{path}:{number}: {line}"
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True and "ignore-without-code" in config["enable_error_code"]
    assert not config.get("ignore_errors") and not config.get("overrides"), config


def test_mypy_strict_accepts_a_typed_bot_and_the_public_modules(tmp_path):
    result = mypy(tmp_path, HERE / "typed_usage.py", *(PACKAGE / name for name in PUBLIC))
    assert result.returncode == 0, result.stdout + result.stderr
    # ...and refuses each wrong use, with the real classes named
    result = mypy(tmp_path, HERE / "misuse.py")
    expected = {
        number: line.rsplit("# MISUSE ", 1)[1].strip()
        for number, line in enumerate((HERE / "misuse.py").read_text().splitlines(), start=1) if "# MISUSE " in line}
    found = {int(m.group(1)): m.group(2) for m in re.finditer(r"misuse\.py:(\d+): error: .*\[([a-z-]+)\]",
                                                               result.stdout)}
    assert found == expected, result.stdout
    assert '"Decimal" and "float"' in result.stdout and '"StreamConfig"' in result.stdout


def test_the_package_ships_py_typed():
    assert (PACKAGE / "py.typed").is_file()
    config = (ROOT / "pyproject.toml").read_text()
    assert 'hybrid_actors = ["py.typed"]' in config
