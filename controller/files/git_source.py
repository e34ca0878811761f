"""Definitions as they are at a Git revision, read through git itself (no checkout, no worktree)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from controller.files.yaml_documents import DEFAULT_MAX_FILE_BYTES, SourceFile, oversized, parse_bytes


class GitError(Exception):
    """git could not answer (not a repository, unknown revision); the message says what to do."""


def _git(cwd: Path, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, input=stdin, capture_output=True, check=False, timeout=120
        )
    except OSError as exc:
        raise GitError(f"cannot run git: {exc}") from exc
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GitError(message[-1] if message else f"git {' '.join(args)} failed")
    return done.stdout


def read_revision(directory: Path, ref: str, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> list[SourceFile]:
    """Every ``*.yaml``/``*.yml`` file under ``directory`` as it is at ``ref``, in a stable order.

    Problems point at ``REF:path`` so that they cannot be mistaken for the working tree's files.
    """
    directory = directory.resolve()
    top = Path(_git(directory, "rev-parse", "--show-toplevel").decode().strip())
    try:
        _git(directory, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except GitError:
        raise GitError(
            f"unknown revision {ref!r}: fetch it first (e.g. git fetch origin) or name a commit"
        ) from None
    prefix = directory.relative_to(top).as_posix()
    listing = _git(top, "ls-tree", "-r", "-z", "--long", ref, "--", prefix if prefix != "." else ".")
    entries: list[tuple[str, str, int]] = []
    for record in listing.split(b"\0"):
        if not record:
            continue
        meta, path = record.split(b"\t", 1)
        _mode, kind, blob_sha, blob_size = meta.split()
        name = path.decode("utf-8")
        if kind == b"blob" and name.endswith((".yaml", ".yml")):
            entries.append((name, blob_sha.decode(), int(blob_size)))
    entries.sort()
    blobs = _read_blobs(top, [sha for _, sha, size in entries if size <= max_bytes])
    files = []
    for name, sha, size in entries:
        display = f"{ref}:{name}"
        files.append(
            oversized(display, size, max_bytes) if size > max_bytes else parse_bytes(blobs[sha], display)
        )
    return files


def _read_blobs(top: Path, shas: list[str]) -> dict[str, bytes]:
    """All blobs in one ``git cat-file --batch`` process (thousands of files, one fork)."""
    if not shas:
        return {}
    output = _git(top, "cat-file", "--batch", stdin="\n".join(shas).encode() + b"\n")
    blobs: dict[str, bytes] = {}
    position = 0
    for sha in shas:
        header_end = output.index(b"\n", position)
        _sha, _kind, size = output[position:header_end].split()
        start = header_end + 1
        blobs[sha] = output[start : start + int(size)]
        position = start + int(size) + 1  # the content is followed by a newline
    return blobs
