"""scripts/*.bat run under Wine's cmd, with a stand-in docker.exe that records what it is given.

The Windows scripts only call ``docker``; what can go wrong in them is how they resolve the
repository's path (``%~dp0..`` made absolute), how they quote it (a path with spaces and
parentheses), how pytest's arguments travel (in PYTEST_ADDOPTS, not on docker's command line) and
whether docker's exit code comes back out. So each test runs a script in a copy of the repository
whose path has spaces and parentheses, with a stand-in ``docker.exe`` first on the PATH: a small
Windows program (compiled here with mingw-w64) that appends its command line, its arguments as
Windows splits them (CommandLineToArgvW) and PYTEST_ADDOPTS to a log, then exits with the code in
FAKE_DOCKER_EXIT. A stand-in must be an .exe: a .bat called from a .bat without CALL never returns.

Needs ``wine`` (Debian's wine package, about 150 MB download) and ``x86_64-w64-mingw32-gcc``
(gcc-mingw-w64-x86-64-win32, about 55 MB); scripts/test.sh installs both when run as root with
apt-get. Under CI (CI set) they are mandatory: the tests fail instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
IMAGE = "conduit_flat_file_db"

FAKE_DOCKER_C = r"""
#include <windows.h>
#include <shellapi.h>
#include <stdio.h>
#include <stdlib.h>

static void put_json_string(FILE *f, const wchar_t *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == L'"' || *s == L'\\') fprintf(f, "\\%c", (char)*s);
        else if (*s < 0x20 || *s > 0x7e) fprintf(f, "\\u%04x", (unsigned)*s);
        else fputc((char)*s, f);
    }
    fputc('"', f);
}

int main(void) {
    static wchar_t log_path[4096], value[32768], code[32];
    int argc = 0;
    wchar_t **argv = CommandLineToArgvW(GetCommandLineW(), &argc);
    FILE *f;
    if (!argv || !GetEnvironmentVariableW(L"FAKE_DOCKER_LOG", log_path, 4096)) return 125;
    f = _wfopen(log_path, L"a");
    if (!f) return 126;
    fputs("{\"command_line\": ", f);
    put_json_string(f, GetCommandLineW());
    fputs(", \"argv\": [", f);
    for (int i = 1; i < argc; i++) {
        if (i > 1) fputs(", ", f);
        put_json_string(f, argv[i]);
    }
    fputs("], \"PYTEST_ADDOPTS\": ", f);
    if (GetEnvironmentVariableW(L"PYTEST_ADDOPTS", value, 32768)) put_json_string(f, value);
    else fputs("null", f);
    fputs("}\n", f);
    fclose(f);
    return GetEnvironmentVariableW(L"FAKE_DOCKER_EXIT", code, 32) ? _wtoi(code) : 0;
}
"""


def windows_path(path: Path) -> str:
    """The path as a Wine program sees it: drive Z: is the Unix root."""
    return "Z:" + str(PurePosixPath(path)).replace("/", "\\")


@dataclass
class Wine:
    """A Wine prefix with the stand-in docker.exe on its PATH, and a copy of the repository's scripts."""

    env: dict[str, str]
    repo: Path
    log: Path

    def run(self, command: list[str], docker_exit: int, cwd: Path | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Run ``wine cmd /c <command>``; its exit code and what docker.exe was called with."""
        self.log.unlink(missing_ok=True)
        with open(self.log.with_suffix(".out"), "wb") as output:  # a file, not a pipe (see the fixture)
            done = subprocess.run(
                ["wine", "cmd", "/c", *command],
                cwd=cwd or self.repo,
                stdout=output,
                stderr=output,
                env={**self.env, "FAKE_DOCKER_EXIT": str(docker_exit)},
                timeout=120,
                check=False,
            )
        if not self.log.exists():
            return done.returncode, []
        return done.returncode, [json.loads(line) for line in self.log.read_text(encoding="ascii").splitlines()]


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed: CI runs the Windows scripts under Wine (apt-get install {package})")
        pytest.skip(f"{name} is not installed (apt-get install {package}; scripts/test.sh does it as root)")
    return found


@pytest.fixture(name="wine", scope="module")
def fixture_wine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wine]:
    """A fresh Wine prefix (about 700 MB, removed afterwards), docker.exe compiled, the scripts copied."""
    _tool("wine", "wine")
    gcc = _tool("x86_64-w64-mingw32-gcc", "gcc-mingw-w64-x86-64-win32")
    base = tmp_path_factory.mktemp("wine")
    (base / "bin").mkdir()
    (base / "fake_docker.c").write_text(FAKE_DOCKER_C)
    subprocess.run(
        [gcc, "-O2", "-Wall", "-o", str(base / "bin" / "docker.exe"), str(base / "fake_docker.c"), "-lshell32"],
        check=True,
        timeout=120,
    )
    repo = base / "ffdb repo (copy)"
    shutil.copytree(SCRIPTS, repo / "scripts", ignore=shutil.ignore_patterns("*.sh"))
    log = base / "docker-calls.jsonl"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTEST_ADDOPTS", "DISPLAY")}
    env.update(
        {
            "WINEPREFIX": str(base / "prefix"),
            "WINEDEBUG": "-all",
            "WINEDLLOVERRIDES": "mscoree,mshtml=",  # no Mono or Gecko installer when the prefix is made
            "WINEPATH": windows_path(base / "bin"),  # goes before the rest of PATH
            "FAKE_DOCKER_LOG": windows_path(log),
        }
    )
    # A persistent wineserver, started before the prefix is made: otherwise each `wine` call after
    # a pause starts a new server and Wine's services again (seconds each). Then make the prefix.
    (base / "prefix").mkdir()
    subprocess.run(["wineserver", "-p"], env=env, check=True, timeout=60)
    # Output to a file, never a pipe: Wine's services outlive the call and would hold a pipe open.
    with open(base / "wineboot.log", "wb") as output:
        subprocess.run(["wine", "wineboot", "--init"], env=env, stdout=output, stderr=output, check=True, timeout=300)
    try:
        yield Wine(env, repo, log)
    finally:
        subprocess.run(["wineserver", "-k"], env=env, check=False, timeout=60)
        shutil.rmtree(base / "prefix", ignore_errors=True)


def test_stand_in_docker_is_what_cmd_finds_and_reports_its_exit_code(wine: Wine) -> None:
    """The harness itself: `docker` resolves to the stand-in, which records and exits as told."""
    status, calls = wine.run(["docker", "version", "a b"], docker_exit=42)
    assert status == 42
    assert [call["argv"] for call in calls] == [["version", "a b"]]


@pytest.mark.parametrize("docker_exit", [0, 3])
def test_build_script_builds_the_image_from_the_resolved_repository_path(wine: Wine, docker_exit: int) -> None:
    """0_win_build_base_image.bat: docker build of the repository (not scripts\\..), its exit code."""
    status, calls = wine.run([r"scripts\0_win_build_base_image.bat"], docker_exit)
    assert [call["argv"] for call in calls] == [["build", "--tag", IMAGE, windows_path(wine.repo)]]
    assert status == docker_exit


def test_build_script_called_by_its_absolute_path_from_another_directory(wine: Wine) -> None:
    """The repository is found from the script's own place, not from the current directory.

    This copy's path has spaces but no parentheses: Wine 8's cmd does not find a quoted command
    whose path has parentheses (Windows' cmd does); the other tests cover parentheses.
    """
    repo = wine.repo.parent / "another ffdb repo"
    shutil.copytree(wine.repo / "scripts", repo / "scripts", dirs_exist_ok=True)
    script = windows_path(repo / "scripts" / "0_win_build_base_image.bat")
    status, calls = wine.run([script], docker_exit=0, cwd=wine.repo)
    assert [call["argv"] for call in calls] == [["build", "--tag", IMAGE, windows_path(repo)]]
    assert status == 0


@pytest.mark.parametrize("docker_exit", [0, 1])
def test_static_checks_script_runs_ruff_mypy_and_pylint_on_the_mounted_tree(wine: Wine, docker_exit: int) -> None:
    """1_win_run_static_checks.bat: the tree mounted at /app, CHECK_STEPS as one argument, the exit code."""
    status, calls = wine.run([r"scripts\1_win_run_static_checks.bat"], docker_exit)
    assert [call["argv"] for call in calls] == [
        [
            "run",
            "--rm",
            "--volume",
            f"{windows_path(wine.repo)}:/app",
            "--workdir",
            "/app",
            "--env",
            "CHECK_STEPS=ruff format mypy pylint",
            IMAGE,
            "bash",
            "scripts/check.sh",
        ]
    ]
    assert calls[0]["PYTEST_ADDOPTS"] is None
    assert status == docker_exit


@pytest.mark.parametrize(
    ("arguments", "addopts"),
    [
        ([], None),
        (["-x", "-q", "-k", "segment and not crash"], '-x -q -k "segment and not crash"'),
        (["-k", "not crash", "-m", "not large"], '-k "not crash" -m "not large"'),
    ],
)
@pytest.mark.parametrize("docker_exit", [0, 5])
def test_tests_script_passes_pytest_arguments_in_pytest_addopts(
    wine: Wine, arguments: list[str], addopts: str | None, docker_exit: int
) -> None:
    """2_win_run_tests.bat: pytest's arguments reach the container whole, in PYTEST_ADDOPTS; the exit code."""
    status, calls = wine.run([r"scripts\2_win_run_tests.bat", *arguments], docker_exit)
    assert [call["argv"] for call in calls] == [
        [
            "run",
            "--rm",
            "--volume",
            f"{windows_path(wine.repo)}:/app",
            "--workdir",
            "/app",
            "--env",
            "CHECK_STEPS=pytest",
            "--env",
            "PYTEST_ADDOPTS",
            IMAGE,
            "bash",
            "scripts/check.sh",
        ]
    ]
    assert calls[0]["PYTEST_ADDOPTS"] == addopts
    assert status == docker_exit
