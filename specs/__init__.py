"""YAML experiment specs: the shipped files, the one schema that validates them (schema.py), reading a
file (load.py) and readable validation errors (messages.py).

Kept free of imports so that the CLI can list the shipped specs in its help without loading pydantic.
"""

from pathlib import Path

SPECS_DIR = Path(__file__).resolve().parent


def shipped_specs() -> list[str]:
    """The names `--spec` takes besides a file: the YAML files shipped in this folder."""
    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))


__all__ = ["SPECS_DIR", "shipped_specs"]
