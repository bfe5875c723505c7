"""Make auto_LiRPA 0.3 import and run on torch 2.13 and numpy 2.

auto_LiRPA 0.3 is the only release on PyPI. It declares torch<1.13 but works on torch 2.13 and
numpy 2 once a few names that it imports or calls, and that newer releases removed, are put back.
Every shim lives here, is small, idempotent and says which auto_LiRPA call needs it; nothing else
in uverify imports auto_LiRPA directly, it calls `import_auto_lirpa()`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import types
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["WORKAROUND_BOUND_OPTS", "apply", "import_auto_lirpa", "prepare", "quiet"]

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
    still reads. The value stays at 12 afterwards, as it did on torch 1.x; `torch.onnx.export`
    (TorchScript path) sets it again from its own `opset_version` on every export.
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
        torch._C.Node.__getitem__ = _node_getitem  # type: ignore[method-assign]


def _shim_named_members() -> None:
    """`BoundedModule._named_members` overrides torch's helper with the torch 1.x signature.

    torch>=2 calls `_named_members(..., remove_duplicate=...)` from `parameters()`,
    `named_parameters()` and `buffers()`, so these raise TypeError on a BoundedModule. auto_LiRPA
    itself calls `list(self.parameters())` in `get_sparse_C` (backward_bound.py) to pick the dtype of
    an identity C for intermediate nodes that are not Linear/Conv (e.g. BatchNorm1d, Add), so CROWN
    crashes there. Accept the keyword; the original always de-duplicates, which is torch's default.
    """
    from auto_LiRPA.bound_general import BoundedModule

    original = BoundedModule._named_members
    if getattr(original, "__uverify_shim__", False):
        return

    def _named_members(
        self: Any, get_members_fn: Any, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Any:
        return original(self, get_members_fn, prefix=prefix, recurse=recurse)

    _named_members.__uverify_shim__ = True  # type: ignore[attr-defined]
    _named_members.__wrapped__ = original  # type: ignore[attr-defined]
    BoundedModule._named_members = _named_members


# Shims that must be in place before `import auto_LiRPA`, then those that patch auto_LiRPA itself.
_PRE_IMPORT = (_shim_numpy_arraysetops, _shim_set_opset_version, _shim_node_getitem)
_POST_IMPORT = (_shim_named_members,)

# Options to pass to every `BoundedModule(..., bound_opts=...)`: they steer around auto_LiRPA 0.3
# bugs rather than torch/numpy changes, and are kept here with the shims.
WORKAROUND_BOUND_OPTS: dict[str, Any] = {
    # BoundRelu.init_opt_parameters (operators/activation.py) resets `alpha_indices = None` for
    # "full alpha" only inside `if verbosity > 0:`, so alpha-CROWN on a layer where over 90% of the
    # neurons are unstable crashes in `reconstruct_full_alpha` ("shape mismatch"). Without
    # sparse-feature alpha every layer takes the full-alpha path, which is correct, only larger.
    "sparse_features_alpha": False,
    # Sparse-spec alpha is sized at initialisation from the CROWN-unstable neurons of each start
    # node, but later passes pick the unstable neurons from IBP reference bounds; when those are
    # over 90% of the layer the C is dense and `_backward_relaxation` fails
    # `assert self.alpha_lookup_idx[...] is None`. Full-spec alpha serves both cases.
    "sparse_spec_alpha": False,
    "verbosity": 0,
}


def _matrix_mode_for_flat_add_sub(bounded: Any) -> None:
    """Add/Sub nodes on flat (non-image) tensors must not claim the conv "patches" mode.

    Every BoundAdd/BoundSub takes `conv_mode` ("patches") as its mode, and `get_sparse_C`
    (backward_bound.py) then treats an Add feeding a ReLU as a conv output and reads
    `output_shape[-3]`: CROWN on `relu(x @ W + b)` (MatMul + Add, as ONNX importers emit for a Gemm
    without transB or a MatMul with bias) dies with IndexError. Patches only exist for 4-d
    (batch, C, H, W) tensors, so the other Add/Sub nodes take the generic matrix path.
    """
    from auto_LiRPA.operators import BoundAdd, BoundSub

    for node in bounded._modules.values():
        shape = getattr(node, "output_shape", None)
        if isinstance(node, (BoundAdd, BoundSub)) and shape is not None and len(shape) != 4:
            node.mode = "matrix"


def _keep_maxpool_out_of_alpha(bounded: Any) -> None:
    """alpha-CROWN optimises ReLU slopes only and bounds MaxPool with its plain CROWN relaxation.

    auto_LiRPA 0.3 cannot set up MaxPool's alpha when a Conv follows it: `get_alpha_crown_start_nodes`
    (backward_bound.py) fails an assertion about the sparse-conv layout, and with dense intermediate
    bounds `BoundMaxPool.init_opt_parameters` calls `torch.empty` with a tuple inside the size. A
    node left out of `optimizable_activations` is never given an optimisation stage, so its
    `bound_backward` takes the non-optimised (sound) path. Other methods never read the list.
    """
    from auto_LiRPA.operators import BoundMaxPool

    bounded.optimizable_activations = [
        node for node in bounded.optimizable_activations if not isinstance(node, BoundMaxPool)
    ]


def _sparse_intermediate_bounds_with_shared_alpha(bounded: Any) -> None:
    """alpha-CROWN with shared alpha re-bounds only the unstable neurons of each layer, as CROWN does.

    `get_sparse_C` (backward_bound.py) bounds an intermediate layer for its unstable neurons only
    (a sparse C) unless `check_optimized_variable_sparsity` says the layer's alpha is dense in the
    spec dimension; it says so whenever sparse-spec alpha is off (WORKAROUND_BOUND_OPTS turns it off),
    so every alpha-CROWN iteration re-bounds every neuron of every layer: on the digits CNN 2048 conv
    neurons where 182 are unstable, two thirds of its time. With shared alpha (one slope per ReLU
    neuron for all specs, `Bounder`'s setting) the spec dimension has size 1 and `_backward_relaxation`
    broadcasts it over any C, dense or sparse, so the sparse C is as valid as in CROWN's pass. A stable
    neuron's relaxation is exact whatever its bounds, so the margins are those of the dense run up to
    float32 round-off (~1e-6 relative on the digits CNN), 2.5-3.5x faster. Where a layer's alpha is
    not shared (size > 1) auto_LiRPA's own answer stands.
    """
    if getattr(bounded, "__uverify_sparse_shared_alpha__", False):
        return
    original = type(bounded).check_optimized_variable_sparsity

    def check_optimized_variable_sparsity(node: Any) -> bool | None:
        sparsity = original(bounded, node)
        if sparsity is False:
            slopes = [getattr(relu, "alpha", None) for relu in bounded.relus]
            alphas = [alpha[node.name] for alpha in slopes if isinstance(alpha, dict) and node.name in alpha]
            if alphas and all(alpha.size(1) == 1 for alpha in alphas):
                return None  # shared: let get_sparse_C decide by the unstable neurons, as for CROWN
        return sparsity

    object.__setattr__(bounded, "check_optimized_variable_sparsity", check_optimized_variable_sparsity)
    object.__setattr__(bounded, "__uverify_sparse_shared_alpha__", True)


def prepare(bounded: Any) -> None:
    """Steer a freshly built BoundedModule around auto_LiRPA 0.3 bugs; idempotent."""
    _matrix_mode_for_flat_add_sub(bounded)
    _keep_maxpool_out_of_alpha(bounded)
    _sparse_intermediate_bounds_with_shared_alpha(bounded)


def apply() -> None:
    """Install every shim (this imports auto_LiRPA); safe to call any number of times."""
    import_auto_lirpa()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Around auto_LiRPA calls: drop the warnings it emits, which would only spam a CLI user.

    Covers auto_LiRPA's own `warnings.warn` notes, torch's TracerWarnings while BoundedModule traces
    the model, and numpy's divide-by-zero RuntimeWarning from `1 / (1 - 1 / norm)` for norm 1 (the
    resulting dual norm inf is the intended value). Exceptions pass through untouched.
    `record=True` also swallows what slips past the filter: importing auto_LiRPA runs
    `warnings.simplefilter("once")`, which takes precedence over our "ignore".
    """
    with warnings.catch_warnings(record=True), np.errstate(divide="ignore"):
        warnings.simplefilter("ignore")
        yield


def import_auto_lirpa() -> types.ModuleType:
    """The `auto_LiRPA` module with every shim applied and its import side effects undone.

    auto_LiRPA/utils.py runs `logging.basicConfig(stream=sys.stdout)` and `warnings.simplefilter("once")`
    at import, which would reconfigure logging and warnings for the whole process; its logger says
    "Converting the model..." at INFO for every BoundedModule. We undo the first two and raise the
    logger to WARNING (warnings and errors still reach the user).
    """
    for shim in _PRE_IMPORT:
        shim()
    module = sys.modules.get("auto_LiRPA")
    if module is None:
        root = logging.getLogger()
        handlers = list(root.handlers)
        try:
            with quiet():  # also restores warnings.filters on exit
                module = importlib.import_module("auto_LiRPA")
        finally:
            for handler in root.handlers[:]:
                if handler not in handlers:
                    root.removeHandler(handler)
    for shim in _POST_IMPORT:
        shim()
    logging.getLogger("auto_LiRPA").setLevel(logging.WARNING)
    return module
