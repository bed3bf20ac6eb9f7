"""User files: reading text that names the file and line of a problem, and checking output locations up front.

Every command checks where it will write (``--out`` / ``--json``) with :func:`check_output_path` before it loads
a model, so an impossible location fails in a second with one line instead of after the work, losing it.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from ..errors import UserInputError

_SURROGATE = re.compile("[\udc80-\udcff]")
OUTPUT_KINDS = ("file", "dir")


# ------------------------------------------------------------------------------------------------- text input
def first_undecodable(text: str) -> tuple[int, int] | None:
    """``(character index, byte value)`` of the first byte that was not UTF-8 in ``text``, else None.

    Text read with ``errors="surrogateescape"`` (as Python decodes ``sys.argv`` and file names on POSIX) keeps
    each such byte as a lone surrogate U+DC80..U+DCFF; this finds the first one.
    """
    m = _SURROGATE.search(text)
    return None if m is None else (m.start(), ord(m.group()) - 0xDC00)


def check_utf8_text(text: str, what: str) -> None:
    """Raise a clear :class:`UserInputError` when ``text`` holds bytes that are not UTF-8 (e.g. a Latin-1 prompt)."""
    bad = first_undecodable(text)
    if bad is not None:
        pos, byte = bad
        raise UserInputError(f"{what} is not valid UTF-8 text (byte 0x{byte:02x} at character {pos}); "
                             "pass UTF-8 text (convert it, e.g. iconv -f latin1 -t utf-8)")


def read_text(path: str | Path, *, what: str = "file") -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped); a byte that is not UTF-8 is an error that
    names the file, the line and the byte."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{what} {str(path)!r} does not exist (or is not a file)")
    text = p.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    bad = first_undecodable(text)
    if bad is not None:
        pos, byte = bad
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        raise UserInputError(f"{what} {p}:{line}: not valid UTF-8 (byte 0x{byte:02x} at column {col}); "
                             "save the file as UTF-8")
    return text


# ------------------------------------------------------------------------------------------------- output
def check_output_path(path: str | os.PathLike | None, *, kind: str, flag: str) -> Path | None:
    """Check, before any work, that ``path`` can be written; returns it as a ``Path`` (None passes through).

    ``kind="file"``: a file to create or overwrite (it must not be a directory). ``kind="dir"``: a folder to
    create or reuse (it must not be a file). Missing parent folders are fine when they can be created (the
    writer creates them); the nearest existing one must be a directory that this process can write to, which
    is tested by creating and removing a temporary file there. Errors name ``flag`` and say what to pass.
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind={kind!r} is invalid: expected one of {', '.join(OUTPUT_KINDS)}")
    if path is None:
        return None
    raw = os.fspath(path)
    if not str(raw).strip():
        raise UserInputError(f"{flag} is empty: pass a {'file path' if kind == 'file' else 'folder'}")
    if "\x00" in str(raw):
        raise UserInputError(f"{flag} {raw!r} contains a NUL character; pass a valid path")
    p = Path(raw).expanduser()
    for part in p.parts:
        if len(os.fsencode(part)) > 255:
            raise UserInputError(f"{flag}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes long; "
                                 "file systems allow at most 255 per name")
    if p.exists():
        if kind == "file":
            if p.is_dir():
                raise UserInputError(f"{flag} {raw!r} is a directory; pass a file path (e.g. {Path(raw) / 'out.json'})")
            try:
                with open(p, "ab"):
                    pass
            except OSError as e:
                raise UserInputError(f"{flag} {raw!r} cannot be written ({e.strerror}); pass another path") from None
            return p
        if not p.is_dir():
            raise UserInputError(f"{flag} {raw!r} is a file; pass a folder (it is created if missing)")
        _probe_dir(p, flag, raw)
        return p
    if p.is_symlink():
        raise UserInputError(f"{flag} {raw!r} is a broken symbolic link; remove it or pass another path")
    ancestor = p.parent
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserInputError(f"{flag} {raw!r} cannot be created: {str(ancestor)!r} is a file, not a folder")
    _probe_dir(ancestor, flag, raw)
    return p


def _probe_dir(directory: Path, flag: str, raw: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=".debias-lm-write-check-", dir=directory)
    except OSError as e:
        raise UserInputError(f"{flag} {raw!r} cannot be written: the folder {str(directory)!r} is not writable "
                             f"({e.strerror}); pass another location") from None
    os.close(fd)
    os.unlink(tmp)


def prepare_parent(path: str | os.PathLike) -> Path:
    """Create the parent folders of an output file (after :func:`check_output_path` said they can be)."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def file_sha256(path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (provenance of data files)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
