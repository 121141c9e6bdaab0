"""Read a dataset archive the same way whether it is a ``.zip`` or a folder it was extracted to.

Member names are always POSIX paths relative to the archive root. macOS debris (``__MACOSX/``, ``._*``
AppleDouble files, ``.DS_Store``) is never listed: the real Kaggle chest X-ray zip is full of it, and an
AppleDouble ``._person1_virus_6.jpeg`` must never be read as an image.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path, PurePosixPath

from .errors import LayoutError


def is_debris(member: str) -> bool:
    """True for macOS metadata that archives made on a Mac carry along."""
    parts = PurePosixPath(member).parts
    return (
        any(p == "__MACOSX" for p in parts)
        or any(p.startswith("._") for p in parts)
        or (bool(parts) and parts[-1] in {".DS_Store", "Thumbs.db", "desktop.ini"})
    )


class Archive:
    """A zip file or a folder, read-only. Example::

    with Archive("chest-xray-pneumonia.zip") as arc:
        jpeg = arc.read("chest_xray/test/NORMAL/IM-0001-0001.jpeg")
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_dir():
            files = (p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())
        elif self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as exc:
                raise LayoutError(
                    f"{self.path}: not a zip archive ({exc}); give a .zip or an extracted folder"
                ) from exc
            files = (i.filename for i in self._zip.infolist() if not i.is_dir())
        else:
            raise LayoutError(f"{self.path}: no such file or folder")
        all_files = sorted(files)
        self.debris = [m for m in all_files if is_debris(m)]
        self.members = [m for m in all_files if not is_debris(m)]

    def read(self, member: str) -> bytes:
        """The bytes of one member."""
        if self._zip is not None:
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
