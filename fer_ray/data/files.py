"""Listing input files without losing any: links to folders followed, odd entries kept.

``prepare``, ``score`` and ``predict`` all promise that every input file ends up as a row (an
image or an error), so they list and name files by the rules here, the files under a folder and
those a glob names alike. ``Path.rglob`` would skip files under a linked folder, entries that
are not regular files (a broken link, a FIFO) and folders it cannot read, all without a word.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import re
import stat
from pathlib import Path
from typing import Iterator, NamedTuple


class Entry(NamedTuple):
    """One thing ``files_under`` found: a file (or other non-folder), or a folder it could not list."""

    path: Path
    problem: str = ""  # why a folder's files are missing ("" for everything else)


def files_under(folder: Path | str, depth: int | None = None) -> list[Entry]:
    """Every non-folder entry below ``folder``, and every folder that could not be listed, sorted
    (``iter_files``'s entries, for callers that want them all at once)."""
    return sorted(iter_files(folder, depth))


def iter_files(folder: Path | str, depth: int | None = None) -> Iterator[Entry]:
    """Every non-folder entry below ``folder``, and every folder that could not be listed, one at
    a time: each folder's files by name, then its subfolders, then the links.

    Each is an ``Entry``: a file, broken link, socket or FIFO, or a folder that could not be
    listed (no permission, a path too long) with the reason in ``problem``, so that the files it
    hides become one error row instead of vanishing. Links are followed, but each real folder is
    entered once and each real file listed once, wherever links point: a link cycle ends, and
    a link back into the tree does not list it a second time under another name. A file
    reachable both through a link and without one is listed under its own name: the tree is
    walked without links first, then each link is followed in name order (the same way in
    every linked tree). ``depth``: how many folder levels below ``folder`` to enter (None: all).

    Memory grows with the folders and the links, not the files: a real file is listed once
    because its real folder is entered once (score streams millions of names through here).
    """
    yield from _walk(os.fspath(folder), 0, depth, set(), set())


def _walk(folder: str, level: int, depth: int | None, folders: set[str], linked: set[str]) -> Iterator[Entry]:
    """``folder``'s entries (at ``level`` below the top): the tree without links, then each link.
    ``folders`` holds the real paths of the folders entered so far, ``linked`` those of the
    files listed under a link's name."""
    links: list[tuple[str, int]] = []  # (path of a link, its level)
    unlisted: list[OSError] = []
    for top, dirs, files in os.walk(folder, onerror=unlisted.append):
        while unlisted:
            exc = unlisted.pop()
            real = os.path.realpath(exc.filename)
            if real not in folders:
                folders.add(real)
                yield Entry(Path(exc.filename), f"folder cannot be listed ({exc.strerror})")
        real = os.path.realpath(top)
        if top != folder and real in folders:
            dirs[:] = []
            continue
        folders.add(real)
        here = level if top == folder else level + os.path.relpath(top, folder).count(os.sep) + 1
        deeper = depth is None or here < depth
        kept = []
        for name in sorted(dirs) if deeper else ():
            path = os.path.join(top, name)
            if os.path.islink(path):
                links.append((path, here + 1))
            else:
                kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            path = os.path.join(top, name)
            if os.path.islink(path):
                links.append((path, here + 1))
            elif os.path.join(real, name) not in linked:
                yield Entry(Path(path))
    while unlisted:  # the top folder itself
        exc = unlisted.pop()
        yield Entry(Path(exc.filename), f"folder cannot be listed ({exc.strerror})")
    for link, at in sorted(links):
        real = os.path.realpath(link)
        if os.path.isdir(link):
            if real not in folders:
                yield from _walk(link, at, depth, folders, linked)
        # A link to a file, a broken link, a link to a FIFO: listed under the link's name unless
        # the file it leads to was listed in its own folder (entered already) or under another link.
        elif not ((os.path.lexists(real) and os.path.dirname(real) in folders) or real in linked):
            linked.add(real)
            yield Entry(Path(link))


def glob_files(pattern: str) -> list[Entry]:
    """The non-folder entries a recursive glob (``**`` for any folders) matches, sorted, and
    the folders that could not be listed where it might match.

    The folder before the first wildcard is listed by ``files_under`` and each entry matched
    part by part: ``glob.glob`` itself follows a link loop under ``**`` until the path grows too
    long (41 rows for one file) and would list a tree again wherever a link re-enters it. As in
    glob, a wildcard matches a name that starts with "." only when its part does too.
    """
    parts = pattern.split("/")
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    base = "/".join(parts[:fixed]) or ("/" if pattern.startswith("/") else ".")
    if not os.path.isdir(base):
        return []
    rest = [part for part in parts[fixed:] if part]
    depth = None if "**" in rest else max(0, len(rest) - 1)
    return [entry for entry in files_under(base, depth=depth)
            if _glob_match(list(Path(os.path.relpath(entry.path, base)).parts), rest, bool(entry.problem))]


def _glob_match(names: list[str], parts: list[str], folder: bool = False) -> bool:
    """Whether the path ``names`` match the pattern ``parts``; with ``folder``, whether some
    path inside that folder could (for a folder that could not be listed)."""
    if not parts:
        return not names
    if not names:
        return folder or parts == ["**"] * len(parts)
    if parts[0] == "**":
        return _glob_match(names, parts[1:], folder) or (
            not names[0].startswith(".") and _glob_match(names[1:], parts, folder))
    if names[0].startswith(".") and not parts[0].startswith("."):
        return False
    return fnmatch.fnmatchcase(names[0], parts[0]) and _glob_match(names[1:], parts[1:], folder)


def not_a_file(path: Path | str | bytes) -> str:
    """Why ``path`` cannot be read as a file ("" when it is a regular file).

    Reading a FIFO would block for ever, so callers check this before opening anything. A
    folder is what ``files_under`` lists when it cannot list the folder's files: it says why.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP) and os.path.islink(path):
            return "broken symbolic link"
        if exc.errno == errno.ENOENT:
            return "file not found"
        return f"cannot be read ({exc.strerror})"  # a path too long, a folder on the way not to be entered
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        try:
            os.scandir(path).close()
        except OSError as exc:
            return f"folder cannot be listed ({exc.strerror})"
        return "a folder, not a file"
    return "not a regular file"


def read_image_file(path: Path | str | bytes, max_pixels: int) -> bytes:
    """The bytes of a file that is to be decoded as an image, or ImageError saying why not.

    The pixel limit is checked later from the image header, but only after the whole file is
    in memory: a multi-gigabyte file named ``.jpg`` would take a worker down first. No image
    format we accept needs more than 8 bytes a pixel, so anything larger is refused unread.
    """
    from fer_ray.data.preprocess import ImageError

    problem = not_a_file(path)
    if problem:  # checked first: opening a FIFO would wait for a writer for ever
        raise ImageError(problem)
    limit = (64 << 20) + 8 * max_pixels
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise ImageError(f"file too large: {size} bytes, more than any image of at most "
                             f"{max_pixels} pixels needs ({limit})")
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ImageError(f"cannot read file ({exc.strerror or exc})") from None


# A backslash that a name itself holds before "xNN", which an escaped byte would look like.
_LITERAL_ESCAPE = re.compile(r"\\(?=x[0-9a-fA-F]{2})")


def display_path(path: Path | str) -> str:
    """A path as a row, an output or a message shows it, one string per file. Parquet, CSV and
    the terminal need UTF-8 strings, and a file name in another encoding (a Latin-1 name from an
    old archive) is not: Python holds its odd bytes as lone surrogates, which Arrow cannot
    store and ``print`` cannot write. They are written as ``\\xNN`` escapes; so that no two
    files share a string (the output's key), a backslash that a name holds before ``xNN`` is
    written ``\\x5c``; every other name comes back unchanged. The file itself is opened by its
    bytes (``os.fsencode``), never by this string."""
    path = _LITERAL_ESCAPE.sub(r"\\x5c", os.fspath(path))
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
