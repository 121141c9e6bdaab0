"""Read a dataset archive the same way whether it is a ``.zip`` or a folder it was extracted to.

Member names are always POSIX paths relative to the archive root. macOS debris (``__MACOSX/``, ``._*``
AppleDouble files, ``.DS_Store``) is never listed: the real Kaggle chest X-ray zip is full of it, and an
AppleDouble ``._person1_virus_6.jpeg`` must never be read as an image.

Every member has one canonical name (:func:`canonical`: ``/`` separators, no ``.``, ``..``, empty or leading
parts), and every check (duplicates, strays, layout, patient grouping) sees only that name. Two members with one
canonical name, or names that differ only in letter case, are refused (which one is meant cannot be known, and a
training image counted twice is, for DP-SGD, a group of two); so are links and special files stored in a zip,
links out of an extracted folder (:func:`~dpmedbench.core.fileio.tree_files`) and two names for one file, members
larger than :data:`MAX_MEMBER_BYTES` (before a byte of them is read) and members this Python cannot read
(encrypted, or compressed with a method such as Deflate64): :meth:`Archive.check_readable` says so before any image
is decoded, and :meth:`Archive.read` before any member is read.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ..core.errors import LayoutError
from ..core.fileio import tree_files

#: How many names an error message lists before it says "and N more".
SHOWN = 10

#: The largest member read (64 MiB); the largest image of either dataset is under 10 MB. A larger member is refused
#: from its declared size (zip) or its size on disk (folder) before it is read, so a zip bomb costs no memory.
MAX_MEMBER_BYTES = 64 << 20


def _supported_compression() -> frozenset[int]:
    """The compression methods this Python's :mod:`zipfile` can decompress."""
    methods = {zipfile.ZIP_STORED}
    for method, module in (
        ("ZIP_DEFLATED", "zlib"),
        ("ZIP_BZIP2", "bz2"),
        ("ZIP_LZMA", "lzma"),
        ("ZIP_ZSTANDARD", "zstd"),
    ):
        if hasattr(zipfile, method) and getattr(zipfile, module, None) is not None:
            methods.add(getattr(zipfile, method))
    return frozenset(methods)


SUPPORTED_COMPRESSION = _supported_compression()


def shown(names: Iterable[str], limit: int = SHOWN) -> str:
    """Up to ``limit`` names, comma-separated, then how many more there are.

    >>> shown(["a", "b", "c"], limit=2)
    'a, b and 1 more'
    """
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def is_debris(member: str) -> bool:
    """True for macOS metadata that archives made on a Mac carry along."""
    parts = PurePosixPath(member).parts
    return (
        any(p == "__MACOSX" for p in parts)
        or any(p.startswith("._") for p in parts)
        or (bool(parts) and parts[-1] in {".DS_Store", "Thumbs.db", "desktop.ini"})
    )


def canonical(name: str) -> str:
    r"""The one form of a member name that every check uses: ``\`` read as ``/``, empty and ``.`` parts dropped,
    ``..`` applied; a name that climbs out of the archive is a :class:`LayoutError`.

    >>> canonical("/chest_xray//./test\\NORMAL/../NORMAL/a.jpeg")
    'chest_xray/test/NORMAL/a.jpeg'
    """
    parts: list[str] = []
    for part in name.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise LayoutError(
                    f"member {name!r} points outside the archive ('..' above its root): the archive is damaged or "
                    f"crafted; re-create it with plain relative names"
                )
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


class Archive:
    """A zip file or a folder, read-only. Example::

    with Archive("chest-xray-pneumonia.zip") as arc:
        jpeg = arc.read("chest_xray/test/NORMAL/IM-0001-0001.jpeg")
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        self._original: dict[str, str] = {}  # canonical name -> name as stored
        try:
            if self.path.is_dir():
                names = [p.relative_to(self.path).as_posix() for p in tree_files(self.path)]
            elif self.path.is_file():
                names = self._open_zip()
            else:
                raise LayoutError(f"{self.path}: no such file or folder")
            spellings: dict[str, list[str]] = defaultdict(list)
            for name in names:
                spellings[canonical(name)].append(name)
            spellings.pop("", None)
            self._refuse_duplicates(spellings)
            self._original = {c: names[0] for c, names in spellings.items()}
            if self._zip is None:
                self._refuse_shared_files()
        except LayoutError as exc:
            self.close()
            if str(exc).startswith(str(self.path)):
                raise
            raise LayoutError(f"{self.path}: {exc}") from None
        all_files = sorted(self._original)
        self.debris = [m for m in all_files if is_debris(m)]
        self.members = [m for m in all_files if not is_debris(m)]

    def _open_zip(self) -> list[str]:
        """Open the zip; the names of its files. A link or special file stored in it is refused."""
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise LayoutError(f"{self.path}: not a zip archive ({exc}); give a .zip or an extracted folder") from exc
        infos = [i for i in self._zip.infolist() if not i.is_dir()]
        odd = [i.filename for i in infos if stat.S_IFMT(i.external_attr >> 16) not in (0, stat.S_IFREG, stat.S_IFDIR)]
        if odd:
            raise LayoutError(
                f"{self.path}: {_plural(len(odd), 'member is', 'members are')} a symbolic link or special file, not "
                f"a file ({shown(odd)}); what a link in a zip points to is not in the zip: re-create the archive "
                f"with the files themselves"
            )
        return [i.filename for i in infos]

    def _refuse_duplicates(self, spellings: dict[str, list[str]]) -> None:
        """One canonical name held twice (``a/./b`` beside ``a/b``, or a zip with two entries of one name), or
        names that differ only in letter case (``train/normal/x`` beside ``train/NORMAL/x``): which one is meant
        cannot be known, and reading both would count one image twice."""
        twice = sorted(f"{c} (as {' and '.join(map(repr, n))})" for c, n in spellings.items() if len(n) > 1)
        if twice:
            raise LayoutError(
                f"{self.path}: {_plural(len(twice), 'member name appears', 'member names appear')} more than once "
                f"({shown(twice)}): which copy is meant cannot be known; download the archive again, "
                f"or re-create it with each file once"
            )
        by_case: dict[str, list[str]] = defaultdict(list)
        for c in spellings:
            if not is_debris(c):
                by_case[c.casefold()].append(c)
        clashes = sorted(" and ".join(sorted(n)) for n in by_case.values() if len(n) > 1)
        if clashes:
            raise LayoutError(
                f"{self.path}: {_plural(len(clashes), 'pair of names differs', 'pairs of names differ')} only in "
                f"letter case ({shown(clashes)}): on a case-insensitive disk they are one file, and reading both "
                f"would count one image twice; keep one of each and run again"
            )

    def _refuse_shared_files(self) -> None:
        """Two names of a folder (a link beside its target) that are one file on disk."""
        by_file: dict[str, list[str]] = defaultdict(list)
        for c, name in self._original.items():
            by_file[os.path.realpath(self.path / name)].append(c)
        shared = sorted(" and ".join(sorted(n)) for n in by_file.values() if len(n) > 1)
        if shared:
            raise LayoutError(
                f"{self.path}: {_plural(len(shared), 'file has', 'files have')} two names (a symbolic link and "
                f"its target, both in the folder: {shown(shared)}); reading both would count one image twice: keep "
                f"one name for each file (move the target to where the link is, or delete the link)"
            )

    def check_readable(self, members: Iterable[str]) -> None:
        """Raise :class:`LayoutError` naming the ``members`` that are encrypted or compressed with a method
        this Python cannot decompress (a no-op for a folder)."""
        if self._zip is None:
            return
        infos = [self._zip.getinfo(self._original.get(m, m)) for m in members]
        if encrypted := [i.filename for i in infos if i.flag_bits & 0x1]:
            raise LayoutError(
                f"{self.path}: {_plural(len(encrypted), 'member is', 'members are')} encrypted ({shown(encrypted)}), "
                f"and the pipeline reads no password-protected zip: extract the archive with its password and give "
                f"the folder as the archive (datasets.<dataset>.archive, source: local)"
            )
        unsupported = [i for i in infos if i.compress_type not in SUPPORTED_COMPRESSION]
        if unsupported:
            methods = sorted({zipfile.compressor_names.get(i.compress_type, str(i.compress_type)) for i in unsupported})
            raise LayoutError(
                f"{self.path}: {_plural(len(unsupported), 'member is', 'members are')} compressed with "
                f"{', '.join(methods)}, which Python's zipfile cannot read ({shown(i.filename for i in unsupported)}): "
                f"extract the archive with a tool that can (7-Zip, Windows Explorer) and give the folder as the "
                f"archive (datasets.<dataset>.archive, source: local), or re-create the zip with plain Deflate"
            )

    def size(self, member: str) -> int:
        """The size of one member: declared in the zip's directory, or on disk."""
        name = self._original.get(member, member)
        if self._zip is not None:
            return self._zip.getinfo(name).file_size
        return (self.path / name).stat().st_size

    def _refuse_large(self, member: str) -> None:
        if (size := self.size(member)) > MAX_MEMBER_BYTES:
            raise LayoutError(
                f"{self.describe(member)}: {size:,} bytes, larger than the {MAX_MEMBER_BYTES >> 20} MiB a member may "
                f"be (no image of either dataset comes near it); it is refused before it is read: the archive is "
                f"damaged or not the dataset's"
            )

    def read(self, member: str) -> bytes:
        """The bytes of one member, refused before reading when larger than :data:`MAX_MEMBER_BYTES`."""
        self._refuse_large(member)
        name = self._original.get(member, member)
        if self._zip is not None:
            self.check_readable([member])
            with self._zip.open(name) as fh:
                data = fh.read(MAX_MEMBER_BYTES + 1)
        else:
            with open(self.path / name, "rb") as fh:
                data = fh.read(MAX_MEMBER_BYTES + 1)
        if len(data) > MAX_MEMBER_BYTES:  # the zip's directory understated it, or the file grew
            self._refuse_large_read(member)
        return data

    def _refuse_large_read(self, member: str) -> None:
        raise LayoutError(
            f"{self.describe(member)}: more than the {MAX_MEMBER_BYTES >> 20} MiB a member may be, though its "
            f"declared size is smaller: the archive is damaged; download it again"
        )

    def sha256(self, member: str) -> str:
        """SHA-256 of one member's bytes, streamed."""
        h = hashlib.sha256()
        name = self._original.get(member, member)
        if self._zip is not None:
            self.check_readable([member])
            opened = self._zip.open(name)
        else:
            opened = open(self.path / name, "rb")  # noqa: SIM115 - closed by the with below
        with opened as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    def describe(self, member: str) -> str:
        """A location a person can find: ``archive.zip:member`` (as stored) or the file's path."""
        name = self._original.get(member, member)
        if self._zip is not None:
            return f"{self.path}:{name}"
        return str(self.path / name)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, object]:
        # Worker processes reopen the archive: a ZipFile handle cannot be pickled.
        return {"path": self.path}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]
