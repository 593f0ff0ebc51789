"""Export an MPO model out of Python: ``torch.export``, then ONNX, checked against PyTorch with onnxruntime.

* :func:`export_program`: a ``torch.export.ExportedProgram`` whose inputs have dynamic batch and
  sequence dimensions (dims 0 and 1 of every input tensor);
* :func:`export_onnx`: the same graph as an ONNX file (``torch.onnx.export(..., dynamo=True)``);
* :func:`check_onnx`: run the file with onnxruntime on example inputs and compare with PyTorch.

The graph keeps the MPO: the cores are its parameters (ONNX initializers) and the contraction of
the cores is an op sequence in the graph, so the file is about as small as the checkpoint. With
``merged=True`` a copy of the model is merged to dense first (:func:`mpokit.merge_and_unload`)
and exported instead: plain dense ops, the dense file size.

How the MPO layers get into the graph. The layers' own ``forward`` keeps inference caches and
eager-only checks that ``torch.export`` cannot trace, so during the export each MPO module is
swapped for a *graph module* that computes the same function from the SAME core Parameters
(registered under the same names), and the model is restored afterwards, also on error. One
graph module per MPO type (:data:`GRAPH_MODULES`, a registry):

* ``MPOLinear`` -> :class:`LinearGraph`: ``y = x W^T + b`` with ``W`` rebuilt from the cores in the
  graph, then one matmul. A layer pinned to contraction (``path="contract"``, or the inference mode
  ``"contract"`` of :func:`mpokit.inference.set_inference_mode`) never forms ``W``: it runs the
  contraction plan of :func:`mpokit.contract.plan_apply` for the rows its input has in the example
  (merged groups of cores, then a sweep);
* ``MPOEmbedding`` -> :class:`EmbeddingGraph`: the rows of the ids gathered from the two merged
  halves of the cores (each row one ``(J_L, d) @ (d, J_R)`` product), never the whole table;
* ``MPOWeight`` (a module kept with its own forward) -> :class:`WeightGraph`: ``W`` (or ``W^T``)
  rebuilt from the cores;
* ``MPOTiedLinear`` (a head tied to an MPO embedding) -> :class:`TiedLinearGraph`: ``x E^T + b``
  with ``E`` rebuilt from the embedding's cores (shared, stored once).

Outputs. The exported graph returns one tensor: the model's output when it is a tensor, else its
first tensor field (``logits`` for task models, ``last_hidden_state`` for encoders). A model whose
forward takes ``use_cache`` is called with ``use_cache=False`` (no key/value cache in the graph).

Runtime memory. The file holds the cores; what a runtime holds is its own choice. onnxruntime folds
the token-independent part of the graph (each rebuilt ``W``, the embedding's merged halves) into
constants when it loads the file (its default graph optimisations), so its memory holds those
dense matrices rather than the cores (BENCHMARKS.md measures it); a layer pinned to contraction
leaves only its merged groups of cores there.

``onnx``, ``onnxscript`` (the exporter's dependency) and ``onnxruntime`` are optional
(``pip install 'mpokit[export]'``) and imported only where they are used.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import contract
from .layers.base import MPOModule
from .layers.embedding import MPOEmbedding
from .layers.linear import MPOLinear
from .layers.weight import MPOWeight
from .surgery import MPOTiedLinear, merge_and_unload

__all__ = ["export_program", "export_onnx", "check_onnx", "require_export_dependencies", "onnx_sizes",
           "GRAPH_MODULES", "register_graph_module", "LinearGraph", "EmbeddingGraph", "WeightGraph",
           "TiedLinearGraph", "ExportDependencyError", "OnnxMismatchError"]

EXPORT_PIP = "pip install 'mpokit[export]'  (onnx, onnxscript, onnxruntime)"
ONNX_SINGLE_FILE_LIMIT = 1_800_000_000  # bytes of initializers kept inside the .onnx file (protobuf's limit is 2 GiB)


class ExportDependencyError(ImportError):
    """An optional package of the export (onnx, onnxscript, onnxruntime) is not installed."""


class OnnxMismatchError(ValueError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance."""


def require_export_dependencies(*, runtime: bool = True) -> None:
    """Raise :class:`ExportDependencyError` naming the missing packages (``onnx``, ``onnxscript``, and
    ``onnxruntime`` when ``runtime``) and the pip command, before any work."""
    missing = []
    for name in ("onnx", "onnxscript") + (("onnxruntime",) if runtime else ()):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportDependencyError(f"the ONNX export needs {', '.join(missing)}, which "
                                    f"{'is' if len(missing) == 1 else 'are'} not installed; run `{EXPORT_PIP}`")


# ---------------------------------------------------------------------------
# graph modules: the MPO layers' functions, from the same core Parameters
# ---------------------------------------------------------------------------


def _share(parameters) -> nn.ParameterList:
    """A ParameterList holding the given Parameter objects themselves (no copies)."""
    out = nn.ParameterList()
    for p in parameters:
        out.append(p)  # ParameterList.append registers the object as it is
    return out


class LinearGraph(nn.Module):
    """``y = x W^T + b`` of an :class:`MPOLinear` by one fixed :class:`~mpokit.contract.ApplyPlan`.

    ``x (..., in_features)`` -> zero-padded ``(T, J)`` -> merge each group of cores -> sweep ->
    ``(T, I)`` -> sliced ``(..., out_features)``. The cores are ``layer.cores``' Parameters.
    """

    def __init__(self, layer: MPOLinear, tokens: int) -> None:
        super().__init__()
        self.cores = _share(layer.core_list())
        self.bias = layer.bias
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.padded = layer.padded_shape  # (I, J)
        if layer.path == "contract" or getattr(layer, "inference_mode", None) == "contract":
            self.plan = contract.plan_apply(layer.out_modes, layer.in_modes, layer.bond_dims, max(int(tokens), 1),
                                            merged_cached=True, contract_only=True)
        else:  # one group: rebuild W, one matmul
            self.plan = next(p for p in contract._all_plans(layer.out_modes, layer.in_modes, layer.bond_dims, 1)
                             if len(p.groups) == 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cores = list(self.cores)
        I, J = self.padded
        if self.plan.path == "rebuild":
            w = contract.rebuild(cores)[: self.out_features, : self.in_features]  # (out, in)
            return F.linear(x, w, self.bias)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (T, in)
        if J != self.in_features:
            x2 = F.pad(x2, (0, J - self.in_features))  # (T, J)
        merged = contract.merge_groups(cores, self.plan.groups)
        y = contract.sweep(x2, merged, self.plan.order)  # (T, I)
        if I != self.out_features:
            y = y[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


def _lightest_split(out_modes, in_modes, bond_dims) -> int:
    """The bond (1..n-1) whose two merged halves ``(I_L, J_L, d)`` and ``(I_R, d, J_R)`` hold fewest elements."""
    dims = (1, *bond_dims, 1)

    def size(m: int) -> tuple[int, int]:
        left = math.prod(out_modes[:m]) * math.prod(in_modes[:m]) * dims[m]
        right = math.prod(out_modes[m:]) * math.prod(in_modes[m:]) * dims[m]
        per_row = math.prod(in_modes[:m]) * dims[m] * math.prod(in_modes[m:])
        return left + right, per_row

    return min(range(1, len(out_modes)), key=size)


class EmbeddingGraph(nn.Module):
    """The rows of an :class:`MPOEmbedding` for ids ``(...)`` -> ``(..., embedding_dim)``, gathered from the cores.

    Cores ``< split`` merge into the left halves ``(I_L, J_L, d)``, the others into the right halves
    ``(I_R, d, J_R)``; row ``r`` is ``left[r // I_R] @ right[r % I_R]`` (as
    :func:`mpokit.layers.embedding.lookup_rows`). Positions holding ``padding_idx`` give zeros.
    """

    def __init__(self, layer: MPOEmbedding) -> None:
        super().__init__()
        self.cores = _share(layer.core_list())
        self.embedding_dim, self.padding_idx = layer.embedding_dim, layer.padding_idx
        self.split = _lightest_split(layer.out_modes, layer.in_modes, layer.bond_dims) if layer.n_cores > 1 else 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        cores = list(self.cores)
        flat = ids.reshape(-1).long()  # (N,)
        if self.split == 0:  # one core: the table itself
            rows = cores[0][0, :, :, 0].index_select(0, flat)  # (N, J)
        else:
            left = contract.merge_cores(cores[: self.split])  # (1, I_L, J_L, d)
            right = contract.merge_cores(cores[self.split:])  # (d, I_R, J_R, 1)
            _, I_L, J_L, d = left.shape
            _, I_R, J_R, _ = right.shape
            left = left.reshape(I_L, J_L, d)
            right = right.reshape(d, I_R, J_R).permute(1, 0, 2)  # (I_R, d, J_R)
            prefix = torch.div(flat, I_R, rounding_mode="floor")  # (N,)
            suffix = flat - prefix * I_R  # (N,)
            # (N, J_L, d) @ (N, d, J_R) -> (N, J_L, J_R) = (N, J)
            rows = torch.bmm(left.index_select(0, prefix), right.index_select(0, suffix)).reshape(flat.shape[0], J_L * J_R)
        rows = rows[:, : self.embedding_dim]  # (N, D)
        if self.padding_idx is not None:
            rows = rows.masked_fill((flat == self.padding_idx).unsqueeze(-1), 0.0)
        return rows.reshape(*ids.shape, self.embedding_dim)


class WeightGraph(nn.Module):
    """The weight an :class:`MPOWeight` supplies to its host: ``W (rows, cols)``, or ``W^T`` when ``transposed``."""

    def __init__(self, weight: MPOWeight) -> None:
        super().__init__()
        self.cores = _share(weight.core_list())
        self.shape, self.transposed = weight.shape, weight.transposed

    def forward(self, *originals: torch.Tensor) -> torch.Tensor:
        rows, cols = self.shape
        w = contract.rebuild(list(self.cores))[:rows, :cols]
        return w.t() if self.transposed else w


class TiedLinearGraph(nn.Module):
    """An :class:`MPOTiedLinear` head: ``x E^T + b`` with ``E (num_embeddings, dim)`` rebuilt from the embedding's cores."""

    def __init__(self, head: MPOTiedLinear) -> None:
        super().__init__()
        self.cores = _share(head.embedding.core_list())
        self.bias = head.bias
        self.shape = tuple(head.embedding.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., num_embeddings)
        rows, cols = self.shape
        return F.linear(x, contract.rebuild(list(self.cores))[:rows, :cols], self.bias)


GRAPH_MODULES: dict[type, Callable[[nn.Module, int], nn.Module]] = {}
"""MPO module type -> ``make(module, tokens) -> graph module`` (``tokens``: the rows its input had in the example)."""


def register_graph_module(mpo_type: type, make: Callable[[nn.Module, int], nn.Module]) -> None:
    """Export ``mpo_type`` modules as ``make(module, tokens)`` (the most derived registered type wins)."""
    GRAPH_MODULES[mpo_type] = make


register_graph_module(MPOLinear, LinearGraph)
register_graph_module(MPOEmbedding, lambda m, tokens: EmbeddingGraph(m))
register_graph_module(MPOWeight, lambda m, tokens: WeightGraph(m))
register_graph_module(MPOTiedLinear, lambda m, tokens: TiedLinearGraph(m))


def _maker(module: nn.Module):
    for cls in type(module).__mro__:
        if cls in GRAPH_MODULES:
            return GRAPH_MODULES[cls]
    return None


# ---------------------------------------------------------------------------
# inputs, outputs, swapping
# ---------------------------------------------------------------------------


def _split_inputs(example_inputs) -> tuple[tuple, dict]:
    """``(args, kwargs)`` from a tensor, a tuple/list of tensors or a dict of named tensors; checked."""
    if isinstance(example_inputs, torch.Tensor):
        args, kwargs = (example_inputs,), {}
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    elif isinstance(example_inputs, dict):
        args, kwargs = (), dict(example_inputs)
    else:
        raise TypeError(f"example_inputs must be a tensor, a tuple of tensors or a dict of named tensors, got "
                        f"{type(example_inputs).__name__}; e.g. {{'input_ids': ids, 'attention_mask': mask}}")
    values = list(args) + list(kwargs.values())
    if not values or not all(isinstance(v, torch.Tensor) for v in values):
        raise TypeError("example_inputs must hold at least one tensor and only tensors, got "
                        f"{[type(v).__name__ for v in values]}; e.g. {{'input_ids': torch.randint(0, 100, (2, 16))}}")
    return args, kwargs


def _dynamic_shapes(tensors: tuple, names: list[str], dynamic: bool):
    """Dims 0 (batch) and 1 (sequence) of every input dynamic; ``None`` when static."""
    if not dynamic:
        return None
    for name, v in zip(names, tensors):
        for d in range(min(v.dim(), 2)):
            if v.shape[d] < 2:
                raise ValueError(f"input {name!r} has size {v.shape[d]} in dim {d}; a dynamic export needs example "
                                 f"sizes >= 2 in the batch and sequence dims (torch.export specialises sizes 0 and 1), "
                                 f"e.g. a (2, 16) example, or dynamic=False")
    # DYNAMIC: ranges the model implies (e.g. at most max_position_embeddings tokens) are taken as they are,
    # but a dim that the trace would fix to its example size is an error
    dim = torch.export.Dim.DYNAMIC
    return {"tensors": tuple({d: dim for d in range(min(v.dim(), 2))} or None for v in tensors)}


class _MainOutput(nn.Module):
    """``model(*args, **kwargs)`` reduced to one tensor (see the module docstring).

    Called with the inputs as one flat tuple ``tensors``: the first ``n_args`` are positional, the
    rest are the keyword arguments ``names`` (torch.export takes no ``**kwargs`` with dynamic shapes).
    """

    def __init__(self, model: nn.Module, n_args: int = 0, names: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.model = model
        self.n_args, self.names = n_args, tuple(names)
        try:
            self.no_cache = "use_cache" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            self.no_cache = False

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        kwargs = dict(zip(self.names, tensors[self.n_args:]))
        if self.no_cache and "use_cache" not in kwargs:
            kwargs["use_cache"] = False
        return main_output(self.model(*tensors[: self.n_args], **kwargs))


def _wrap(model: nn.Module, args: tuple, kwargs: dict) -> tuple[_MainOutput, tuple]:
    return _MainOutput(model, len(args), tuple(kwargs)), tuple(args) + tuple(kwargs.values())


def _input_names(args: tuple, kwargs: dict) -> list[str]:
    return [f"input_{k}" for k in range(len(args))] + list(kwargs)


def main_output(out: Any) -> torch.Tensor:
    """The tensor the export returns: ``out`` itself, or its first tensor field / item."""
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"the model returned {type(out).__name__} holding no tensor; export needs a model that returns "
                    "a tensor, a tuple or a ModelOutput")


def _token_counts(model: nn.Module, args: tuple, kwargs: dict) -> dict[int, int]:
    """Rows of the input each MPO Linear sees in one eager pass on the example (``id(module) -> rows``)."""
    counts: dict[int, int] = {}
    hooks = []
    for m in model.modules():
        if isinstance(m, MPOLinear):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, inp: counts.__setitem__(id(mod), math.prod(inp[0].shape[:-1]))))
    try:
        wrapper, tensors = _wrap(model, args, kwargs)
        with torch.no_grad():
            wrapper(*tensors)
    finally:
        for h in hooks:
            h.remove()
    return counts


def _check_exportable(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, MPOModule) and _maker(m) is None:
            raise TypeError(f"{name!r} is a {type(m).__name__}, which has no graph module for the export "
                            f"(registered: {sorted(t.__name__ for t in GRAPH_MODULES)}); export the dense model "
                            "with merged=True, or register one with mpokit.export.register_graph_module")


@contextlib.contextmanager
def graph_modules(model: nn.Module, tokens: dict[int, int] | None = None) -> Iterator[nn.Module]:
    """Swap every MPO module of ``model`` for its graph module (same Parameters) inside the block; restore after."""
    _check_exportable(model)
    tokens = tokens or {}
    swaps = []
    for name, m in list(model.named_modules()):
        make = _maker(m) if name else None
        if make is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        swaps.append((parent, child, m, make(m, tokens.get(id(m), 1))))
    try:
        for parent, child, _, new in swaps:
            setattr(parent, child, new)
        yield model
    finally:
        for parent, child, old, _ in reversed(swaps):
            setattr(parent, child, old)


def _merged_copy(model: nn.Module) -> nn.Module:
    return merge_and_unload(copy.deepcopy(model)).eval()


# ---------------------------------------------------------------------------
# the public functions
# ---------------------------------------------------------------------------


def export_program(model: nn.Module, example_inputs, *, merged: bool = False,
                   dynamic: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` on ``example_inputs`` (a tensor, a tuple, or a dict of named tensors).

    With ``dynamic`` (default) dims 0 and 1 of every input are the dynamic batch and sequence dims
    (examples need sizes >= 2 there). The MPO layers are exported as graph modules over their own
    cores (module docstring); ``merged=True`` exports a dense copy instead. ``model`` itself is left
    as it was. The program returns one tensor (:func:`main_output`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    args, kwargs = _split_inputs(example_inputs)
    wrapper_inputs = tuple(args) + tuple(kwargs.values())
    shapes = _dynamic_shapes(wrapper_inputs, _input_names(args, kwargs), dynamic)
    target = _merged_copy(model) if merged else model
    _check_exportable(target)
    was_training = target.training
    target.eval()
    try:
        tokens = _token_counts(target, args, kwargs)
        with graph_modules(target, tokens), torch.no_grad():
            wrapper, tensors = _wrap(target, args, kwargs)
            return torch.export.export(wrapper, tensors, dynamic_shapes=shapes, strict=False)
    finally:
        target.train(was_training)


def _core_ids(model: nn.Module) -> set[int]:
    return {id(p) for m in model.modules() if isinstance(m, MPOModule) for p in m.core_list()}


def export_onnx(model: nn.Module, path: str | os.PathLike, example_inputs, *, merged: bool = False) -> Path:
    """Write ``model`` as an ONNX file at ``path`` (dynamo exporter, dynamic batch and sequence dims).

    The graph is :func:`export_program`'s; inputs keep their names (``input_ids``, ...; positional
    ones are ``input_0``, ...) and the output is ``output``. The exporter's graph optimiser runs with
    one change: no node that reads an MPO core is constant-folded, so the cores stay initializers
    and the ops that contract them stay in the graph (the default would fold small cores into dense
    matrices). Initializers stay inside the file unless they exceed ~1.8 GB (then they go to
    ``path + ".data"``). The exporter's per-node debugging notes (stack traces with local paths)
    are left out. Returns the path.
    """
    require_export_dependencies(runtime=False)
    from onnxscript.optimizer import optimize_ir

    path = Path(path)
    program = export_program(model, example_inputs, merged=merged)
    cores = _core_ids(model) if not merged else set()
    core_names = {name for name, t in program.state_dict.items() if id(t) in cores}
    param_bytes = sum(t.numel() * t.element_size() for t in program.state_dict.values())
    external = param_bytes > ONNX_SINGLE_FILE_LIMIT
    args, kwargs = _split_inputs(example_inputs)
    onnx_program = torch.onnx.export(program, dynamo=True, optimize=False, external_data=external,
                                     input_names=_input_names(args, kwargs), output_names=["output"], verbose=False)

    def should_fold(node) -> bool | None:  # None: the optimiser's default rules
        return False if any(v is not None and v.name in core_names for v in node.inputs) else None

    optimize_ir(onnx_program.model, should_fold=should_fold)  # inlines functions: every node is in the main graph
    for node in onnx_program.model.graph:
        node.metadata_props.clear()  # the exporter's debugging notes (stack traces, FX nodes): ~2 kB per node
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(str(path), external_data=external)
    return path


def _as_numpy(t: torch.Tensor):
    return t.detach().cpu().numpy()


def check_onnx(path: str | os.PathLike, model: nn.Module, example_inputs, *, rtol: float = 1e-4) -> float:
    """Run the ONNX file with onnxruntime (CPU) on ``example_inputs`` and compare with ``model`` in PyTorch.

    Returns the relative difference ``max |onnx - torch| / max |torch|`` over the output; raises
    :class:`OnnxMismatchError` (naming it) when it exceeds ``rtol``. Inputs may have other batch and
    sequence sizes than the export's example (the dims are dynamic).
    """
    require_export_dependencies(runtime=True)
    import onnxruntime as ort

    args, kwargs = _split_inputs(example_inputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    given = _input_names(args, kwargs)
    if sorted(given) != sorted(names):
        raise ValueError(f"{path} takes the inputs {names}, got {given}")
    feed = dict(zip(given, tuple(args) + tuple(kwargs.values())))
    got = torch.from_numpy(session.run(None, {k: _as_numpy(v) for k, v in feed.items()})[0])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            wrapper, tensors = _wrap(model, args, kwargs)
            want = wrapper(*tensors).detach().cpu()
    finally:
        model.train(was_training)
    if tuple(got.shape) != tuple(want.shape):
        raise OnnxMismatchError(f"onnxruntime gives an output of shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}")
    scale = want.double().abs().max().item()
    diff = (got.double() - want.double()).abs().max().item() / (scale if scale > 0 else 1.0)
    if not diff <= rtol:
        raise OnnxMismatchError(f"onnxruntime's output differs from PyTorch's by {diff:.3e} relative "
                                f"(max |onnx - torch| / max |torch|), above rtol={rtol:g}")
    return diff


def onnx_sizes(path: str | os.PathLike, model: nn.Module | None = None) -> dict:
    """Sizes in bytes: ``file`` (the .onnx plus an external data file), ``initializers`` (their raw data),
    the largest initializers' ``(name, shape)``; with ``model``, ``cores`` (its MPO cores' bytes) too."""
    require_export_dependencies(runtime=False)
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    proto = onnx.load(str(path), load_external_data=True)
    inits = [(i.name, tuple(i.dims), numpy_helper.to_array(i).nbytes) for i in proto.graph.initializer]
    data = path.with_name(path.name + ".data")
    out = {"file": path.stat().st_size + (data.stat().st_size if data.is_file() else 0),
           "initializers": sum(b for _, _, b in inits),
           "largest": [(n, s) for n, s, _ in sorted(inits, key=lambda r: -r[2])[:5]]}
    if model is not None:
        seen: set[int] = set()
        cores = 0
        for m in model.modules():
            if isinstance(m, MPOModule):
                for p in m.core_list():
                    if id(p) not in seen:
                        seen.add(id(p))
                        cores += p.numel() * p.element_size()
        out["cores"] = cores
    return out
