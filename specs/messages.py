"""pydantic's validation errors as the one line a user reads: the key path as written in the YAML
(without pydantic's discriminator tags) and, for an unknown key or value, the closest valid one.

Written by hand: pydantic reports where and what, but its locations carry union tags and its
messages know nothing of "did you mean"; this walk through the schema's types adds both.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel

from uverify.specs.schema import Spec


def describe(err: Any) -> str:
    """One of `ValidationError.errors()` as `key.path: what is wrong`."""
    where, problem = locate(err)
    return f"{where}: {problem}"


def locate(err: Any) -> tuple[str, str]:
    """One of `ValidationError.errors()` as (the key path as the YAML writes it, what is wrong there)."""
    loc: tuple[Any, ...] = tuple(err["loc"])
    shown, model = _walk(loc[:-1] if err["type"] == "extra_forbidden" else loc)
    where = ".".join(str(part) for part in shown) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        fields = list(model.model_fields) if model is not None else []
        where = ".".join(str(part) for part in (*shown, key))
        return where, f"unknown key{_did_you_mean(key, fields)} (valid keys: {', '.join(fields)})"
    if kind == "missing":
        return where, "required key is missing"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        options = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        tag = str(ctx.get("tag", ""))
        field = ctx.get("discriminator", "").strip("'")
        return (
            f"{where}.{field}",
            f"unknown value {tag!r}{_did_you_mean(tag, options)} (choose from {', '.join(options)})",
        )
    if kind == "union_tag_not_found":
        field = err.get("ctx", {}).get("discriminator", "").strip("'")
        return f"{where}.{field}", "required key is missing"
    if kind in ("literal_error", "enum"):
        options = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        hint = _did_you_mean(str(err.get("input")), options)
        return where, f"invalid value {err.get('input')!r}{hint} (choose from {', '.join(options)})"
    message = str(err["msg"]).removeprefix("Value error, ")
    return where, f"{message} (got {err.get('input')!r})"


def _did_you_mean(given: str, options: list[str]) -> str:
    lowered = {opt.lower(): opt for opt in options}
    close = difflib.get_close_matches(given.lower(), list(lowered), n=1, cutoff=0.5)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def _walk(loc: tuple[Any, ...]) -> tuple[list[Any], type[BaseModel] | None]:
    """Follow `loc` through the schema's types; return the displayed path and the model reached."""
    shown: list[Any] = []
    current: Any = Spec
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return shown, current
            shown.append(part)
            current = field.annotation
            continue
        members = _union_members(current)
        if members:
            tagged = [m for m in members if _tag_of(m) == part]
            if tagged:  # a discriminator tag in the loc: not a key the user wrote
                current = tagged[0]
                continue
        if typing.get_origin(current) in (list, tuple):
            shown[-1] = f"{shown[-1]}[{part}]" if shown else f"[{part}]"
            current = typing.get_args(current)[0] if typing.get_args(current) else Any
            continue
        shown.append(part)
        current = Any
    current = _unwrap(current)
    model = current if isinstance(current, type) and issubclass(current, BaseModel) else None
    return shown, model


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    members = _union_members(tp)
    non_none = [m for m in members if m is not type(None)]
    if members and len(non_none) == 1:
        return _unwrap(non_none[0])
    return tp


def _union_members(tp: Any) -> list[Any]:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [_unwrap(m) for m in typing.get_args(tp)]
    return []


def _tag_of(model: Any) -> Any:
    if isinstance(model, type) and issubclass(model, BaseModel):
        for name in ("dataset", "arch"):
            field = model.model_fields.get(name)
            if field is not None and typing.get_origin(field.annotation) is Literal:
                return typing.get_args(field.annotation)[0]
    return None


__all__ = ["describe", "locate"]
