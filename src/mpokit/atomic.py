"""The one atomic writer of mpokit: files and whole sets of files that are replaced at once or not at all.

* :func:`atomic_write_bytes` / :func:`atomic_write_text`: write to a temporary file in the same folder,
  ``fsync``, then ``os.replace`` (atomic on POSIX). The file's mode follows the umask (``0o666 & ~umask``),
  like any file ``open`` creates.
* :func:`atomic_write_with`: the same for writers that need a path (``safetensors.torch.save_file``,
  ``matplotlib``'s ``savefig``).
* :func:`commit_file_set` / :func:`read_file_set`: a *set* of files committed by one manifest. Each blob
  is written under a name that holds its SHA-256 (``model_state.<sha12>.safetensors``); the manifest,
  written last with :func:`atomic_write_text`, records every blob's name, size and hash. A kill at any
  moment leaves either the previous manifest (whose blobs are still there: they are removed only after
  the new manifest is in place) or the new one. Blobs no manifest names are stray leftovers of an
  interrupted save; the next commit removes them. :func:`read_file_set` verifies size and hash of every
  blob before returning anything.
* :func:`check_output_dir`: refuse an output folder that a file is in the way of, before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Mapping

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_with", "commit_file_set", "read_file_set",
           "FileSetError", "check_output_dir"]


class FileSetError(ValueError):
    """A committed file set that is missing, incomplete or corrupt."""


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, fsync it, then move it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, ``os.replace``)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write_with(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _blob_name(role: str, digest: str) -> str:
    """``model.safetensors`` -> ``model.<first 12 hex digits of the SHA-256>.safetensors``."""
    stem, dot, ext = role.partition(".")
    return f"{stem}.{digest[:12]}{dot}{ext}"


def _is_blob_of(name: str, role: str) -> bool:
    stem, dot, ext = role.partition(".")
    return re.fullmatch(re.escape(stem) + r"\.[0-9a-f]{12}" + re.escape(dot + ext), name) is not None


def commit_file_set(directory: str | os.PathLike, manifest_name: str, blobs: Mapping[str, bytes],
                    manifest: Mapping, *, stale_roles: tuple[str, ...] = ()) -> dict:
    """Write ``blobs`` (``{role: bytes}``, role like ``"model_state.safetensors"``) and then the manifest.

    The manifest JSON is ``manifest`` plus ``"files": {role: {"file", "bytes", "sha256"}}``. Returns it.
    Blobs of earlier commits that the new manifest does not name (for the roles of ``blobs`` and
    ``stale_roles``) are removed afterwards, as are temporary files of interrupted writes.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, data in blobs.items():
        digest = hashlib.sha256(data).hexdigest()
        name = _blob_name(role, digest)
        if not (directory / name).is_file() or (directory / name).stat().st_size != len(data):
            atomic_write_bytes(directory / name, data)
        files[role] = {"file": name, "bytes": len(data), "sha256": digest}
    full = dict(manifest, files=files)
    atomic_write_text(directory / manifest_name, json.dumps(full, indent=1, sort_keys=True))
    keep = {f["file"] for f in files.values()} | {manifest_name}
    roles = tuple(blobs) + tuple(stale_roles)
    for entry in directory.iterdir():
        stray_tmp = entry.name.startswith(".") and entry.name.endswith(".tmp")
        old_blob = entry.name not in keep and any(_is_blob_of(entry.name, role) for role in roles)
        if entry.is_file() and (stray_tmp or old_blob):
            entry.unlink(missing_ok=True)
    return full


def read_file_set(directory: str | os.PathLike, manifest_name: str) -> tuple[dict, dict[str, bytes]]:
    """``(manifest, {role: bytes})`` of a set written by :func:`commit_file_set`, every blob verified.

    Raises :class:`FileSetError` naming the file when the manifest is missing or not JSON, when a blob
    is missing, has another size or another SHA-256, or when a file name points outside ``directory``.
    """
    directory = Path(directory)
    path = directory / manifest_name
    if not path.is_file():
        raise FileSetError(f"{path} not found: {str(directory)!r} holds no complete checkpoint")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileSetError(f"{path} is corrupt (not valid JSON: {e})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise FileSetError(f"{path} lists no files; it was not written by mpokit")
    out = {}
    root = directory.resolve()
    for role, entry in files.items():
        name = str(entry.get("file", ""))
        blob = (directory / name).resolve()
        if blob.parent != root:
            raise FileSetError(f"{path}: the file {name!r} of {role!r} lies outside {directory}; refusing to read it")
        if not blob.is_file():
            raise FileSetError(f"{blob} is missing; the checkpoint in {directory} is incomplete")
        data = blob.read_bytes()
        if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise FileSetError(f"{blob} is corrupt or was replaced: its size or SHA-256 does not match {path}")
        out[role] = data
    return manifest, out


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` as a Path when it is an existing folder or can become one; a ValueError before any work when a
    file is in the way (``path`` itself or a parent). Creates nothing."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == path else f"lies under the file {str(p)!r}"
                raise ValueError(f"{option} {str(path)!r} {where}, not a folder; give a folder, e.g. {option} runs/my_run")
            if not os.access(p, os.W_OK | os.X_OK):
                raise ValueError(f"{option} {str(path)!r}: cannot write in {str(p)!r} (permission denied)")
            break
    return path
