"""Make auto_LiRPA 0.3 import and run on torch 2.13 and numpy 2.

auto_LiRPA 0.3 is the only release on PyPI. It declares torch<1.13 but works on torch 2.13 and
numpy 2 once a few names that it imports or calls, and that newer releases removed, are put back.
Every shim lives here, is small, idempotent and says which auto_LiRPA call needs it; nothing else
in uverify imports auto_LiRPA directly, it calls `import_auto_lirpa()`.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["apply", "import_auto_lirpa", "quiet"]

_ARRAYSETOPS = "numpy.lib.arraysetops"
# numpy 2 keeps the set routines public under `numpy`; these are the ones numpy 1.x's
# `numpy.lib.arraysetops` exported.
_ARRAYSETOPS_NAMES = (
    "ediff1d",
    "intersect1d",
    "isin",
    "setdiff1d",
    "setxor1d",
    "union1d",
    "unique",
)


def _shim_numpy_arraysetops() -> None:
    """`auto_LiRPA/operators/base.py` does `from numpy.lib.arraysetops import isin` at import time.

    numpy 2 removed the module `numpy.lib.arraysetops` (the functions live on under `numpy`), so
    `import auto_LiRPA` fails with ModuleNotFoundError. Register a stand-in module that re-exports
    numpy's set routines.
    """
    if _ARRAYSETOPS in sys.modules:
        return
    try:
        importlib.import_module(_ARRAYSETOPS)  # numpy 1.x: the real module exists
        return
    except ImportError:
        pass
    module = types.ModuleType(_ARRAYSETOPS, "uverify shim: numpy 1.x set routines for numpy 2.")
    for name in _ARRAYSETOPS_NAMES:
        setattr(module, name, getattr(np, name))
    sys.modules[_ARRAYSETOPS] = module


def _set_opset_version(opset_version: int) -> None:
    """Stand-in for torch<2's `torch.onnx.symbolic_helper._set_opset_version`."""
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    GLOBALS.export_onnx_opset_version = opset_version


def _shim_set_opset_version() -> None:
    """`auto_LiRPA/parse_graph.py` imports `_set_opset_version` from `torch.onnx.symbolic_helper`.

    `BoundedModule` → `parse_module` calls `_set_opset_version(12)` before lowering the traced graph
    to ONNX ops with `torch.onnx.utils._optimize_graph`, so that the ops come out in the opset-12
    form that auto_LiRPA's operator map knows (e.g. attribute-style `axes`). torch 2 dropped the
    setter; the value it set is `GLOBALS.export_onnx_opset_version`, which `_optimize_graph`
    still reads.
    """
    import torch.onnx.symbolic_helper as symbolic_helper

    if not hasattr(symbolic_helper, "_set_opset_version"):
        symbolic_helper._set_opset_version = _set_opset_version  # type: ignore[attr-defined]


def _node_getitem(node: torch._C.Node, name: str) -> Any:
    """`node[name]`: the attribute `name` through the accessor for its kind (`i`, `f`, `is`, `t`…)."""
    return getattr(node, node.kindOf(name))(name)


def _shim_node_getitem() -> None:
    """`auto_LiRPA/parse_graph.py:parse_graph` reads node attributes as `n[k]`.

    torch<1.13's `torch.onnx.utils` monkey-patched `torch._C.Node.__getitem__` with exactly this
    kind-dispatching getter; torch 2 no longer does, so `BoundedModule(...)` fails with
    "'torch._C.Node' object is not subscriptable".
    """
    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = _node_getitem  # type: ignore[attr-defined,method-assign]


_SHIMS = (_shim_numpy_arraysetops, _shim_set_opset_version, _shim_node_getitem)


def apply() -> None:
    """Install every shim; safe to call any number of times."""
    for shim in _SHIMS:
        shim()


def quiet() -> None:
    """Keep auto_LiRPA's INFO/DEBUG chatter and warnings away from a CLI user; errors still show."""
    logging.getLogger("auto_LiRPA").setLevel(logging.ERROR)


def import_auto_lirpa() -> types.ModuleType:
    """The `auto_LiRPA` module, imported after `apply()` with its import side effects undone."""
    apply()
    if "auto_LiRPA" in sys.modules:
        return sys.modules["auto_LiRPA"]
    filters = list(warnings.filters)
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        module = importlib.import_module("auto_LiRPA")
    finally:
        # auto_LiRPA/utils.py calls `logging.basicConfig(stream=sys.stdout)` and
        # `warnings.simplefilter("once")` at import: both would reconfigure the whole process.
        warnings.filters[:] = filters
        warnings._filters_mutated()  # type: ignore[attr-defined]
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
    quiet()
    return module
