"""Atomic file output: write to a temporary file in the target folder, verify it, then rename.

A crash, a full disk or Ctrl-C never leaves a partial file under the final name, and an
existing file is replaced only at the very end (``os.replace`` is atomic on one filesystem).
Before that the temporary file is flushed to disk (``fsync``) and, when the caller gives a
``verify`` function, read back and checked: some writers (SimpleITK's NIfTI writer) do not report
a full disk and would otherwise publish a truncated file over a good one. With
``overwrite=False`` the file is published with a hard link, which fails if the name exists, so
two concurrent runs cannot both "create" the same file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from spinect.errors import OutputError, SpinectError

__all__ = ["atomic_output", "check_output_path", "check_name_encoding", "full_suffix"]


def full_suffix(path: str | os.PathLike) -> str:
    """Lower-case compound suffix: ``.nii.gz``, ``.seg.nrrd``, ``.nrrd``, ``.nii``, ``.mha``..."""
    name = Path(path).name.lower()
    for compound in (".seg.nrrd", ".nii.gz"):
        if name.endswith(compound):
            return compound
    return Path(name).suffix


def check_name_encoding(path: str | os.PathLike, *, what: str = "file", error: type[SpinectError] = OutputError) -> None:
    """Refuse a path whose name holds bytes that are not UTF-8 (``os.fsdecode`` keeps them as surrogates).

    SimpleITK cannot pass such a name to C++: it aborts the whole process (SIGABRT), which would
    kill 3D Slicer when spinect runs inside it, or fails with an obscure TypeError.

    Raises:
        error: naming the path (undecodable bytes shown as ``\\xNN``) and asking to rename it.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        raise error(
            f"the {what} name {shown} holds bytes that are not valid UTF-8 text; the image library cannot open such "
            "names (it would abort the process). Rename the file or folder with plain characters"
        ) from None


def check_output_path(path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Fail early (before any long computation) if ``path`` cannot be written.

    Raises:
        OutputError: the folder does not exist, is not a folder, is not writable, ``path`` is a
            folder, ``path`` exists and ``overwrite`` is False, or its name is not UTF-8
            (:func:`check_name_encoding`).
    """
    check_name_encoding(path, what="output")
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"output path {path} is a folder; give a file name such as {path / 'segmentation.seg.nrrd'}")
    if not folder.exists():
        raise OutputError(f"output folder {folder} does not exist; create it first (mkdir -p {folder})")
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} is not a folder")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; choose another name or allow overwriting")
    # Permission bits say little when running as root; a real probe file says the truth.
    try:
        fd, probe = tempfile.mkstemp(prefix=".spinect-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write to output folder {folder}: {exc.strerror}; choose a writable folder") from exc
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, verify: Callable[[Path], None] | None = None,
                  overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success verify it and rename it onto ``path``.

    The temporary name keeps the final suffix so that writers choosing a format by extension
    (SimpleITK, slicerio) still work. On any exception the temporary file is removed and
    nothing appears under ``path``.

    Args:
        path: the final file.
        verify: called with the written temporary file after ``fsync``; raises (any exception)
            when the file is not what was meant to be written (then nothing is published).
        overwrite: False publishes with a hard link that fails when ``path`` exists (no
            check-then-replace race).

    Raises:
        OutputError: on OS errors (disk full, read-only folder), a failed verification, or an
            existing ``path`` with ``overwrite=False``, with the cause.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    suffix = full_suffix(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot create a file in {folder}: {exc.strerror}; choose a writable folder") from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync(tmp)
        if verify is not None:
            _verified(verify, tmp, path)
        # mkstemp makes 0600 files; give the output the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_current_umask())
        _publish(tmp, path, overwrite=overwrite)
    except OutputError:
        _unlink_quietly(tmp)
        raise
    except OSError as exc:
        _unlink_quietly(tmp)
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"disk full while writing {path}; free some space and run again") from exc
        raise OutputError(f"could not write {path}: {exc}") from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _fsync(path: Path) -> None:
    """Flush the file's data to the disk: a full disk or quota shows up here, not after rename."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _verified(verify: Callable[[Path], None], tmp: Path, path: Path) -> None:
    try:
        verify(tmp)
    except OutputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failed read-back means a bad file
        raise OutputError(
            f"the file written for {path} does not read back correctly ({exc}); the disk may be full or failing. "
            "Nothing was replaced; free some space and run again"
        ) from exc


def _publish(tmp: Path, path: Path, *, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic create-if-absent
    except FileExistsError as exc:
        raise OutputError(f"{path} already exists; choose another name or allow overwriting") from exc
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # file systems without hard links: exclusive create of the name, then replace onto it
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
        os.replace(tmp, path)
        return
    _unlink_quietly(tmp)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
