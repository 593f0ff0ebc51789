"""Gradual bond truncation: shrink MPO layers during training on the cubic schedule of gradual pruning.

Magnitude pruning (Zhu & Gupta 2017) starts from a dense model and removes weights while it trains.
:class:`GradualBondTruncation` does the same for MPO layers: it starts from their current bonds
(typically the exact MPO of a dense layer, from ``from_linear`` / ``from_lstm``) and lowers the
bonds every ``frequency`` steps so that each layer's parameter count follows

    params(step) = final + (start - final) * (1 - progress)^3,  progress = (step - begin) / (end - begin)

reaching the ``final_bonds`` exactly at ``end_step``. ``start`` is the smaller of the layer's current
MPO count and its dense count (rows x columns), so the schedule is pruning's, measured in weights of
the dense matrix: an exact MPO has more parameters than the matrix it represents (full bonds), and
the first cut removes that surplus. (Starting from the surplus instead keeps the bonds over-complete
for longer; with Adam, whose steps are per element, the effective step on the weight matrix then
grows with the parameter count, and in the LSTM recipe the recurrent matrix's norm tripled within an
epoch: ``scripts/lstm_training_variants.py``, RESULTS.md.) Each cut is a TT-SVD truncation of the trained
cores (:meth:`mpokit.layers.base.MPOModuleBase.truncate_`), so it removes the smallest singular values
of the weights as they are at that step. A cut replaces the cores by new ``nn.Parameter`` objects:
hand them to the optimizer with :func:`sync_optimizer`, passing ``carry=schedule.replaced`` so that
each new core inherits its predecessor's Adam statistics (:func:`hand_on_state`) instead of
restarting them (a restarted Adam moves every element by the full lr on its first step).

Example::

    mpo_lstm = MPOLSTM.from_lstm(nn.LSTM(256, 256))                 # exact: full bonds
    final = {name: (40, 40, 40) for name, _ in mpo_lstm.weight_modules()}
    schedule = GradualBondTruncation(dict(mpo_lstm.weight_modules()), final, begin_step=0, end_step=1000, frequency=10)
    for step, batch in enumerate(batches):
        loss.backward(); opt.step()
        if schedule.step(step):
            sync_optimizer(opt, model.parameters(), carry=schedule.replaced)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from . import shapes

__all__ = ["GradualBondTruncation", "hand_on_state", "sync_optimizer"]


@dataclass
class _Layer:
    name: str
    module: nn.Module
    start_params: int
    final_bonds: tuple[int, ...]
    final_params: int


class GradualBondTruncation:
    """Truncate MPO layers from their current bonds to ``final_bonds`` on a cubic schedule.

    ``modules``: name -> MPO module (anything with ``out_modes``, ``in_modes``, ``bond_dims`` and
    ``truncate_(max_bond=...)``, e.g. :class:`~mpokit.layers.linear.MPOLinear` or the W / U modules
    of :meth:`~mpokit.layers.lstm.MPOLSTM.weight_modules`). ``final_bonds``: name -> bonds at the end;
    each must be reachable (consistent with the modes) and no larger than the current bond. Cuts
    happen at ``begin_step`` and every ``frequency`` steps after it, and at the first call with
    ``step >= end_step``, which cuts to ``final_bonds`` exactly.
    """

    def __init__(self, modules: Mapping[str, nn.Module], final_bonds: Mapping[str, Sequence[int]], *, begin_step: int = 0,
                 end_step: int = 0, frequency: int = 1):
        if set(modules) != set(final_bonds):
            raise ValueError(f"final_bonds must name exactly the modules: modules {sorted(modules)}, final_bonds "
                             f"{sorted(final_bonds)}; e.g. {{name: (40, 40, 40) for name in modules}}")
        if not modules:
            raise ValueError("no MPO modules to truncate; pass e.g. dict(mpo_lstm.weight_modules())")
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
            raise ValueError(f"frequency must be an int >= 1 step, got {frequency!r}; e.g. frequency=10")
        if not 0 <= begin_step <= end_step:
            raise ValueError(f"need 0 <= begin_step <= end_step, got begin_step={begin_step}, end_step={end_step}; e.g. 0, 1000")
        self.begin_step, self.end_step, self.frequency = int(begin_step), int(end_step), frequency
        self.replaced: list[tuple[nn.Parameter, nn.Parameter]] = []  # (old core, new core) of the last cut
        self.layers = []
        for name, module in modules.items():
            current = tuple(module.bond_dims)
            final = tuple(int(d) for d in final_bonds[name])
            reachable = shapes.consistent_bond_dims(module.out_modes, module.in_modes, final)
            if len(final) != len(current) or final != reachable or any(f > c for f, c in zip(final, current)):
                raise ValueError(
                    f"final bonds {final} of {name!r} must be consistent with its modes (out {module.out_modes} x in "
                    f"{module.in_modes}) and no larger than its current bonds {current}; e.g. {reachable}")
            dense = math.prod(module.out_modes) * math.prod(module.in_modes)
            start = max(min(self._params(module, current), dense), self._params(module, final))
            self.layers.append(_Layer(name, module, start, final, self._params(module, final)))

    @staticmethod
    def _params(module: nn.Module, bonds: Sequence[int]) -> int:
        return shapes.mpo_num_params(module.out_modes, module.in_modes, bonds)

    def params_at(self, step: int) -> dict[str, int]:
        """Target parameter count of each layer at ``step``: the cubic schedule from ``min(current MPO
        count, dense count)`` at ``begin_step`` to the final count at ``end_step``; no cut before ``begin_step``."""
        if step >= self.end_step:
            return {layer.name: layer.final_params for layer in self.layers}
        if step < self.begin_step:
            return {layer.name: self._params(layer.module, layer.module.bond_dims) for layer in self.layers}
        remaining = (1.0 - (step - self.begin_step) / (self.end_step - self.begin_step)) ** 3
        return {layer.name: math.floor(layer.final_params + (layer.start_params - layer.final_params) * remaining)
                for layer in self.layers}

    def bonds_at(self, step: int) -> dict[str, tuple[int, ...]]:
        """Bonds each layer is cut to at ``step``: its current bonds capped at the largest uniform
        cap whose MPO fits the scheduled count, never below its final bonds."""
        if step >= self.end_step:
            return {layer.name: layer.final_bonds for layer in self.layers}
        targets = self.params_at(step)
        out = {}
        for layer in self.layers:
            m, current = layer.module, tuple(layer.module.bond_dims)
            best = current
            for cap in range(max(current), 0, -1):
                bonds = shapes.consistent_bond_dims(m.out_modes, m.in_modes,
                                                    [max(min(c, cap), f) for c, f in zip(current, layer.final_bonds)])
                best = bonds
                if self._params(m, bonds) <= targets[layer.name]:
                    break
            out[layer.name] = best
        return out

    def step(self, step: int) -> bool:
        """Cut the bonds if ``step`` is a truncation step; returns whether any core was replaced
        (then call :func:`sync_optimizer`)."""
        due = step >= self.end_step or (step >= self.begin_step and (step - self.begin_step) % self.frequency == 0)
        if not due or self.finished():
            return False
        self.replaced = []
        bonds = self.bonds_at(step)
        for layer in self.layers:
            if bonds[layer.name] != tuple(layer.module.bond_dims):
                old = list(layer.module.cores)
                layer.module.truncate_(max_bond=list(bonds[layer.name]))
                self.replaced += list(zip(old, layer.module.cores))
        return bool(self.replaced)

    def num_params(self) -> int:
        """Current MPO parameters of all layers."""
        return sum(self._params(layer.module, layer.module.bond_dims) for layer in self.layers)

    @property
    def final_params(self) -> int:
        return sum(layer.final_params for layer in self.layers)

    def finished(self) -> bool:
        return all(tuple(layer.module.bond_dims) == layer.final_bonds for layer in self.layers)


def hand_on_state(optimizer: torch.optim.Optimizer, pairs: Sequence[tuple[nn.Parameter, nn.Parameter]]) -> None:
    """Give each new core of ``pairs`` (``(old, new)``, :attr:`GradualBondTruncation.replaced`) Adam
    state derived from its old core's, instead of a restart: the step count is kept, the first moment
    starts at zero and the second moment at the mean of the old core's. The new core's first updates
    then have the size the old core's had, not the full ``lr`` per element that a restarted Adam gives
    (bias correction at step 1). Old cores' state is dropped. Pairs whose old core has no Adam-like
    state (``step`` and ``exp_avg_sq``) are skipped: the new core starts fresh."""
    for old, new in pairs:
        state = optimizer.state.pop(old, None)
        if not state or "exp_avg_sq" not in state or "step" not in state:
            continue
        sq = torch.full_like(new, float(state["exp_avg_sq"].mean()))
        handed = {"step": state["step"].clone() if torch.is_tensor(state["step"]) else state["step"],
                  "exp_avg": torch.zeros_like(new), "exp_avg_sq": sq}
        if "max_exp_avg_sq" in state:  # amsgrad
            handed["max_exp_avg_sq"] = sq.clone()
        optimizer.state[new] = handed


def sync_optimizer(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter],
                   carry: Sequence[tuple[nn.Parameter, nn.Parameter]] = ()) -> None:
    """Point a one-group optimizer at ``params`` (the model's live parameters after a cut): state of
    parameters that are still there is kept, state of replaced ones is dropped, or handed on to their
    successors for the ``(old, new)`` pairs in ``carry`` (:func:`hand_on_state`)."""
    if len(optimizer.param_groups) != 1:
        raise ValueError(f"sync_optimizer needs an optimizer with one parameter group, got {len(optimizer.param_groups)}; "
                         "e.g. torch.optim.Adam(model.parameters())")
    live = list(params)
    keep = {id(p) for p in live}
    hand_on_state(optimizer, [(old, new) for old, new in carry if id(new) in keep])
    for p in optimizer.param_groups[0]["params"]:
        if id(p) not in keep:
            optimizer.state.pop(p, None)
    optimizer.param_groups[0]["params"] = live
