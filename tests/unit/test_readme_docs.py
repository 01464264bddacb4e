"""The README: its Python examples run as printed, use only the public API, and it documents every option."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import conduit_flat_file_db
import conduit_flat_file_db.tiering
from conduit_flat_file_db import FlatFileDb, flat_file_db

README = Path(__file__).resolve().parents[2] / "README.md"


# Its example needs an S3 server: tests/tiering/test_readme_tiering.py runs it against one.
SERVER_SECTIONS = ("Tiering to object storage",)


def _python_blocks(with_server_sections: bool = False) -> list[str]:
    text = README.read_text(encoding="utf-8")
    if not with_server_sections:
        for title in SERVER_SECTIONS:
            head, rest = text.split(f"\n## {title}\n", 1)
            text = head + "\n## " + rest.split("\n## ", 1)[1]
    return [block.split("\n", 1)[1] for block in text.split("```")[1::2] if block.startswith("python\n")]


def test_readme_basic_usage_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every ```python block of README.md executes without error and deletes what it says it deletes."""
    blocks = _python_blocks()
    assert blocks, "README.md has no python example"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})  # pylint: disable=exec-used
    assert "Deleting the mutable file is not allowed" in capsys.readouterr().out
    remaining = sorted(p.name for p in (tmp_path / "blob_store1").iterdir())
    assert "data_00000000.dat.zst" not in remaining and "data_00000000.idx" not in remaining
    assert "data_00000001.dat.zst" in remaining


def _section(title: str) -> str:
    """The text of README.md's ``## title`` section, up to the next ``## `` heading."""
    text = README.read_text(encoding="utf-8")
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_examples_use_only_the_public_api() -> None:
    """The README's examples import only public modules and names, and touch no private attribute."""
    public_modules = {
        "conduit_flat_file_db": set(conduit_flat_file_db.__all__),
        "conduit_flat_file_db.flat_file_db": set(dir(flat_file_db)),
        "conduit_flat_file_db.tiering": set(conduit_flat_file_db.tiering.__all__),
    }
    for block in _python_blocks(with_server_sections=True):
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert not node.attr.startswith("_"), f"README example uses private {node.attr}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("conduit_flat_file_db"):
                assert node.module in public_modules, node.module
                for alias in node.names:
                    assert alias.name in public_modules[node.module], f"{node.module}.{alias.name}"


def test_readme_first_example_seals_with_rotate() -> None:
    """The first example seals with ``rotate()``; the original's private alias is only mentioned beside it."""
    usage = _section("Basic usage")
    first = _python_blocks()[0]
    assert "ffdb.rotate()" in first
    assert "_maybe_get_new_mutable_file" not in first
    assert "_maybe_get_new_mutable_file" in usage and "tests/unit/test_readme_example.py" in usage


def test_readme_development_names_the_public_api() -> None:
    """The Development section says once what is public: ``__all__`` plus the compatibility module."""
    development = _section("Development")
    assert development.count("`conduit_flat_file_db.__all__`") == 1
    assert "`conduit_flat_file_db.flat_file_db`" in development
    assert "internal" in development


def _constructor_options() -> set[str]:
    """Every named parameter of FlatFileDb's constructor, following ``**options`` to the base class."""
    names: set[str] = set()
    for cls in FlatFileDb.__mro__:
        if "__init__" not in vars(cls):
            continue
        params = inspect.signature(vars(cls)["__init__"]).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def test_readme_names_every_constructor_option() -> None:
    """Every option of ``FlatFileDb(...)`` is named in the README's Basic usage section."""
    usage = _section("Basic usage")
    options = _constructor_options()
    assert {"datadir", "fsync", "use_compression", "min_frame_saving"} <= options
    missing = sorted(name for name in options if f"`{name}`" not in usage and f"{name}=" not in usage)
    assert not missing, f'README.md "Basic usage" does not name the options {missing}'
