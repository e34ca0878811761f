"""Shared fixtures: a scratch definitions directory and helpers to validate it."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

WriteDefs = Callable[..., Path]


@pytest.fixture
def defs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``defs/`` directory; the working directory is its parent so paths print as defs/…"""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "defs"
    root.mkdir()
    return root


@pytest.fixture
def write_defs(defs_dir: Path) -> WriteDefs:
    """Write ``{relative path: YAML text}`` into ``defs/`` (text is dedented) and return ``defs``."""

    def write(files: dict[str, str | bytes] | None = None, **named: str) -> Path:
        for name, content in {**(files or {}), **named}.items():
            target = defs_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(textwrap.dedent(content).lstrip("\n"), encoding="utf-8")
        return Path("defs")

    return write
