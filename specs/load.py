"""Reading a spec: a YAML file (or the name of a shipped one) with `yaml.safe_load` semantics and no
key given twice, command-line overrides applied by dotted key path, validated by the schema; every
failure is one `SpecError` line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from uverify.errors import SpecError, one_line
from uverify.specs import SPECS_DIR, shipped_specs
from uverify.specs.messages import locate
from uverify.specs.schema import CheckSpec, Spec

M = TypeVar("M", bound=BaseModel)


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that rejects a key given twice, which plain YAML would resolve by dropping one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def resolve_spec_path(ref: str | Path) -> Path:
    """A path to a spec file, or the bare name of a shipped spec (`mixture` -> specs/mixture.yaml)."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    text = str(ref)
    if "/" not in text and not path.suffix and (SPECS_DIR / f"{text}.yaml").is_file():
        return SPECS_DIR / f"{text}.yaml"
    if path.exists():
        raise SpecError(f"spec {text}: not a file")
    raise SpecError(f"spec {text}: no such file (shipped specs: {', '.join(shipped_specs())})")


def load_spec(ref: str | Path, overrides: dict[str, Any] | None = None, flags: dict[str, str] | None = None) -> Spec:
    """Read, parse (yaml.safe_load semantics) and validate a spec; every failure is a `SpecError`.

    `overrides` maps dotted key paths to values (`{"data.path": "x.csv"}`) applied before validation,
    so that a command-line option is validated exactly like the same key in the file; `flags` names the
    option each override came from (`{"property.epsilon": "--epsilon"}`), so that its error blames the
    option, not the file.
    """
    path = resolve_spec_path(ref)
    raw = _read_yaml(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    given = {
        key: flag for key, flag in (flags or {}).items() if key in (overrides or {})
    }  # the file's own errors stay the file's
    return validate_spec(raw, source=str(path), flags=given)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loader = _UniqueKeyLoader(path.read_text(encoding="utf-8"))  # a SafeLoader: no Python objects
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or one_line(exc)
        raise SpecError(f"spec {path}: malformed YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"spec {path}: cannot read: {exc}") from None
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else f"a {type(raw).__name__}, not a mapping"
        raise SpecError(f"spec {path}: the file is {kind}; expected keys such as name, data, model")
    return raw


def validate_spec(raw: dict[str, Any], source: str = "<spec>", flags: dict[str, str] | None = None) -> Spec:
    return _validate(Spec, raw, source, flags)


def check_spec_from_flags(name: str, overrides: dict[str, Any], flags: dict[str, str]) -> CheckSpec:
    """A check's settings without a spec file: the given options over the schema's defaults."""
    raw: dict[str, Any] = {"name": name}
    for dotted, value in overrides.items():
        _set_dotted(raw, dotted, value)
    return _validate(CheckSpec, raw, "(command line)", flags)


def _validate(model: type[M], raw: dict[str, Any], source: str, flags: dict[str, str] | None) -> M:
    """`model` validated from `raw`; each problem is blamed on the option it came from, else on `source`."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        from_file, from_flags = [], []
        for err in exc.errors():
            where, problem = locate(err)
            flag = next(
                (f for key, f in (flags or {}).items() if where == key or where.startswith((f"{key}[", f"{key}."))),
                None,
            )
            if flag is None:
                from_file.append(f"{where}: {problem}")
            else:
                from_flags.append(f"{flag}: {problem}")
        parts = from_flags + ([f"spec {source}: " + "; ".join(from_file)] if from_file else [])
        raise SpecError("; ".join(parts)) from None


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[last] = value


__all__ = ["check_spec_from_flags", "load_spec", "resolve_spec_path", "validate_spec"]
