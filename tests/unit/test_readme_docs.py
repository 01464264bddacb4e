"""The README's own Python example runs as printed, in a scratch directory."""

from __future__ import annotations

from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [block.split("\n", 1)[1] for block in text.split("```")[1::2] if block.startswith("python\n")]


def test_readme_basic_usage_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
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
