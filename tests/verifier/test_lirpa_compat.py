"""Each auto_LiRPA 0.3 shim: present after apply(), behaves right, harmless when applied twice."""

from __future__ import annotations

import importlib
import logging
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from uverify.verifier import lirpa_compat


@pytest.fixture(scope="module")
def lirpa():
    return lirpa_compat.import_auto_lirpa()


def test_import_returns_auto_lirpa_and_is_idempotent(lirpa):
    assert lirpa.__name__ == "auto_LiRPA"
    assert lirpa.__version__ == "0.3"
    lirpa_compat.apply()
    lirpa_compat.apply()
    assert lirpa_compat.import_auto_lirpa() is lirpa


def test_numpy_arraysetops_shim(lirpa):
    arraysetops = importlib.import_module("numpy.lib.arraysetops")
    assert arraysetops.isin is np.isin
    np.testing.assert_array_equal(arraysetops.isin([1, 2, 3], [2]), [False, True, False])
    lirpa_compat.apply()
    assert importlib.import_module("numpy.lib.arraysetops") is arraysetops


def test_set_opset_version_shim(lirpa):
    import torch.onnx.symbolic_helper as symbolic_helper
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    setter = symbolic_helper._set_opset_version  # type: ignore[attr-defined]
    before = GLOBALS.export_onnx_opset_version
    try:
        setter(12)
        assert GLOBALS.export_onnx_opset_version == 12
        setter(17)
        assert GLOBALS.export_onnx_opset_version == 17
    finally:
        GLOBALS.export_onnx_opset_version = before
    lirpa_compat.apply()
    assert symbolic_helper._set_opset_version is setter  # type: ignore[attr-defined]


def test_node_getitem_shim(lirpa):
    graph = torch._C.parse_ir(
        """
        graph(%x : Tensor):
          %i : int = prim::Constant[value=3]()
          %f : float = prim::Constant[value=2.5]()
          %s : str = prim::Constant[value="abc"]()
          return (%x)
        """
    )
    values = [node["value"] for node in graph.nodes() if node.kind() == "prim::Constant"]
    assert values == [3, 2.5, "abc"]
    getitem = torch._C.Node.__getitem__
    lirpa_compat.apply()
    assert torch._C.Node.__getitem__ is getitem


def test_node_getitem_reads_onnx_attributes_the_way_parse_graph_does(lirpa):
    from auto_LiRPA.parse_graph import parse_module

    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(8, 2))
    with lirpa_compat.quiet():
        nodes, _, _, _ = parse_module(model, (torch.zeros(1, 1, 4, 4),))
    conv = next(node for node in nodes if node.op == "onnx::Conv")
    assert conv.attr["strides"] == [2, 2]
    assert conv.attr["pads"] == [1, 1, 1, 1]


def test_named_members_shim(lirpa):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with lirpa_compat.quiet():
        bounded = lirpa.BoundedModule(model, torch.zeros(1, 3))
    params = list(bounded.parameters())  # TypeError without the shim on torch>=2
    assert len(params) == 4
    assert len(dict(bounded.named_parameters())) == 4
    shimmed = lirpa.BoundedModule._named_members
    lirpa_compat.apply()
    assert lirpa.BoundedModule._named_members is shimmed
    assert not getattr(shimmed.__wrapped__, "__uverify_shim__", False)


def test_workaround_bound_opts_let_alpha_crown_run_with_mostly_unstable_conv(lirpa):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.rand(2, 1, 8, 8)
    opts = dict(lirpa_compat.WORKAROUND_BOUND_OPTS, optimize_bound_args={"iteration": 3})
    with lirpa_compat.quiet():
        bounded = lirpa.BoundedModule(model, torch.zeros_like(x), bound_opts=opts)
        # eps=1 makes nearly every conv neuron unstable: the path that crashes without the option.
        ptb = lirpa.PerturbationLpNorm(norm=math.inf, eps=1.0)
        lb, _ = bounded.compute_bounds(x=(lirpa.BoundedTensor(x, ptb),), method="CROWN-Optimized", bound_upper=False)
    assert lb.shape == (2, 3)
    assert torch.isfinite(lb).all()


class _MatMulAdd(nn.Module):
    """x @ W + b as two ops, the way an ONNX MatMul + Add arrives."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().t().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, self.weight) + self.bias


def _crown_lower(lirpa, model, x, method="CROWN"):
    opts = dict(lirpa_compat.WORKAROUND_BOUND_OPTS, optimize_bound_args={"iteration": 3})
    with lirpa_compat.quiet():
        bounded = lirpa.BoundedModule(model, torch.zeros_like(x), bound_opts=opts)
        lirpa_compat.prepare(bounded)
        lirpa_compat.prepare(bounded)  # idempotent
        ptb = lirpa.PerturbationLpNorm(norm=math.inf, eps=0.3)
        lb, _ = bounded.compute_bounds(x=(lirpa.BoundedTensor(x, ptb),), method=method, bound_upper=False)
    return lb


def test_prepare_lets_crown_bound_matmul_plus_add_like_linear(lirpa):
    torch.manual_seed(3)
    layers = [nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)]
    linear = nn.Sequential(*layers).eval()
    split = nn.Sequential(*[_MatMulAdd(m) if isinstance(m, nn.Linear) else m for m in layers]).eval()
    x = torch.rand(3, 5)
    for method in ("CROWN", "CROWN-Optimized"):
        torch.testing.assert_close(_crown_lower(lirpa, split, x, method), _crown_lower(lirpa, linear, x, method))


def test_prepare_lets_alpha_crown_bound_maxpool_before_conv(lirpa):
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 3),
    ).eval()
    x = torch.rand(2, 1, 6, 6)
    alpha = _crown_lower(lirpa, model, x, "CROWN-Optimized")
    crown = _crown_lower(lirpa, model, x, "CROWN")
    assert torch.all(alpha >= crown - 1e-5)


def test_quiet_swallows_warnings_but_not_errors():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with lirpa_compat.quiet():
            warnings.warn("noise", UserWarning, stacklevel=1)
            np.float64(1.0) / np.float64(0.0)
        with pytest.raises(ValueError), lirpa_compat.quiet():
            raise ValueError("kept")
    assert caught == []


def test_logger_keeps_warnings_and_errors_only(lirpa):
    logger = logging.getLogger("auto_LiRPA")
    assert not logger.isEnabledFor(logging.INFO)
    assert logger.isEnabledFor(logging.WARNING)
    assert logger.isEnabledFor(logging.ERROR)


def test_fresh_import_is_silent_and_leaves_logging_and_warnings_alone():
    # auto_LiRPA's import runs logging.basicConfig(stream=sys.stdout) and simplefilter("once").
    code = (
        "import logging, warnings\n"
        "from uverify.verifier.lirpa_compat import import_auto_lirpa\n"
        "import_auto_lirpa()\n"
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
        "catch_all = [f for f in warnings.filters if f[1] is None and f[2] is Warning and f[3] is None]\n"
        "assert catch_all == [], catch_all\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ""


def _models():
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).eval()
    return [("mlp", mlp, (2, 5)), ("cnn", cnn, (2, 1, 6, 6))]


@pytest.mark.parametrize("name, model, shape", _models(), ids=["mlp", "cnn"])
def test_end_to_end_every_method_norm_and_domain(lirpa, name, model, shape):
    """BoundedModule + compute_bounds for IBP, CROWN-IBP, CROWN, alpha-CROWN × inf, 2, 1 × domain."""
    torch.manual_seed(2)
    x = torch.rand(shape)
    with torch.no_grad():
        logits = model(x)
    opts = dict(lirpa_compat.WORKAROUND_BOUND_OPTS, optimize_bound_args={"iteration": 3})
    with lirpa_compat.quiet():
        bounded = lirpa.BoundedModule(model, torch.zeros(shape), bound_opts=opts)
        lirpa_compat.prepare(bounded)
    for method in ("IBP", "CROWN-IBP", "CROWN", "alpha-CROWN"):
        for norm in (math.inf, 2, 1):
            for domain in (False, True):
                box = {"x_L": (x - 0.05).clamp(0, 1), "x_U": (x + 0.05).clamp(0, 1)} if domain else {}
                with lirpa_compat.quiet():
                    ptb = lirpa.PerturbationLpNorm(norm=norm, eps=0.05, **box)
                    lb, ub = bounded.compute_bounds(x=(lirpa.BoundedTensor(x, ptb),), method=method)
                where = f"{name} {method} norm={norm} domain={domain}"
                assert lb.shape == ub.shape == logits.shape, where
                assert torch.all(lb <= logits + 1e-5), where
                assert torch.all(logits <= ub + 1e-5), where
