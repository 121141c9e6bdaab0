"""Read a dataset archive the same way whether it is a ``.zip`` or a folder it was extracted to.

Member names are always POSIX paths relative to the archive root. macOS debris (``__MACOSX/``, ``._*``
AppleDouble files, ``.DS_Store``) is never listed: the real Kaggle chest X-ray zip is full of it, and an
AppleDouble ``._person1_virus_6.jpeg`` must never be read as an image.

A zip that holds one name twice is refused (which of the two is meant cannot be known), and so are members
this Python cannot read (encrypted, or compressed with a method such as Deflate64): :meth:`Archive.check_readable`
says so before any image is decoded, and :meth:`Archive.read` before any member is read.
"""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ..core.errors import LayoutError

#: How many names an error message lists before it says "and N more".
SHOWN = 10


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
        if self.path.is_dir():
            files = [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]
        elif self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as exc:
                raise LayoutError(
                    f"{self.path}: not a zip archive ({exc}); give a .zip or an extracted folder"
                ) from exc
            files = [i.filename for i in self._zip.infolist() if not i.is_dir()]
        else:
            raise LayoutError(f"{self.path}: no such file or folder")
        all_files = sorted(files)
        self.debris = [m for m in all_files if is_debris(m)]
        self.members = [m for m in all_files if not is_debris(m)]
        self._refuse_duplicates()

    def _refuse_duplicates(self) -> None:
        """A zip can hold two entries under one name; which one a reader gets is then arbitrary."""
        twice = sorted(m for m, n in Counter(self.members).items() if n > 1)
        if twice:
            self.close()
            raise LayoutError(
                f"{self.path}: {_plural(len(twice), 'member name appears', 'member names appear')} more than once "
                f"in the zip ({shown(twice)}): which copy is meant cannot be known; download the archive again, "
                f"or re-create it with each file once"
            )

    def check_readable(self, members: Iterable[str]) -> None:
        """Raise :class:`LayoutError` naming the ``members`` that are encrypted or compressed with a method
        this Python cannot decompress (a no-op for a folder)."""
        if self._zip is None:
            return
        infos = [self._zip.getinfo(m) for m in members]
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

    def read(self, member: str) -> bytes:
        """The bytes of one member."""
        if self._zip is not None:
            self.check_readable([member])
            return self._zip.read(member)
        return (self.path / member).read_bytes()

    def describe(self, member: str) -> str:
        """A location a person can find: ``archive.zip:member`` or the file's path."""
        if self._zip is not None:
            return f"{self.path}:{member}"
        return str(self.path / member)

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
