"""MPOLinear vs nn.Linear and two peers: time, memory and cost-model FLOPs, in one run.

Settings (issue 3): shapes 768->768, 768->3072, 3072->768; 512 and 8192 tokens;
uniform bond caps giving about 1x, 4x, 16x and 64x fewer parameters than dense,
plus two extra caps (2 and 4; thousands of times fewer) where contraction needs
far fewer FLOPs than dense. Peers at matched parameter counts (the rank whose
parameter count is closest to MPOLinear's): tensorly-torch
``FactorizedLinear(factorization='blocktt')`` with the same tensorized shapes, and
torch-mpo ``TTLinear`` with the same modes.

What is measured (float32 unless ``--dtype bf16``):

* ``fwd``: inference forward, eval mode under ``torch.no_grad`` (MPOLinear uses
  its cached weight or cached merged cores, chosen automatically);
* ``f+b``: a training step, ``y = m(x); y.square().mean().backward()`` with
  ``x.requires_grad`` (every layer also computes the input gradient);
* times are medians over ``reps`` repetitions, the reference and the candidate
  run alternately (the machine is shared and noisy); printed as candidate/dense
  (below 1 = faster than nn.Linear). ``min:`` columns give the ratio of the fastest
  repetitions too: on a loaded machine preemption only adds time, so for short
  calls the minimum tracks the code's own cost better than the median;
* ``mem``: peak memory of one training step, including parameters, input and
  gradients, divided by nn.Linear's. CPU: the process's peak resident set size
  (``VmHWM``, reset through ``/proc/self/clear_refs`` before each step) above
  the RSS before the step, plus parameter and input bytes. Memory is measured
  after all timings, in a child process with glibc's mmap threshold pinned to 64 KiB
  (:func:`memory_in_subprocess`) so freed tensors leave the RSS. Timings run with
  the default allocator: a pinned threshold makes every large allocation page-fault
  afresh, which slows the code that allocates intermediates (up to 2x in a forward
  pass) and is not how the layers run in practice. CUDA:
  ``torch.cuda.max_memory_allocated`` above the allocation before the step, plus
  the same bytes. The tensorly-torch peer's memory is measured the same way (``tl mem``);
* ``ctr/dense``: the cost model's FLOPs of the best pure contraction (merging
  allowed, no full rebuild) over dense FLOPs; ``plan``: the plan MPOLinear runs
  in training and in inference (``R`` = rebuild, else merged groups ``[first last]``
  and the sweep order, ``L...`` left to right, ``R...L`` right to left).

Usage: ``python benchmarks/bench_layers.py [--quick] [--threads N] [--device cpu|cuda] [--dtype fp32|bf16]``
(``--quick``: 768->768 only, 512 tokens, 1x/16x/64x + one extra cap, 3 reps).
At the end the MPOLSTM benchmark (``benchmarks/bench_lstm.py``) runs if present.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from tqdm import tqdm

from mpokit import contract, shapes
from mpokit.layers import MPOLinear

SHAPES = ((768, 768), (768, 3072), (3072, 768))  # (in_features, out_features)
TOKENS = (512, 8192)
REDUCTIONS = (1, 4, 16, 64)
EXTRA_CAPS = (2, 4)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MAX_PEER_INTERMEDIATE = 150_000_000  # elements; larger peer runs are skipped (would need > 0.6 GB per tensor)


# ---------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------


def cap_for_reduction(out_modes, in_modes, dense: int, reduction: int) -> int:
    """Largest uniform bond cap whose MPO has at most ``dense / reduction`` parameters."""
    best = 1
    for cap in range(1, max(shapes.full_bond_dims(out_modes, in_modes)) + 1):
        dims = shapes.consistent_bond_dims(out_modes, in_modes, [cap] * (len(out_modes) - 1))
        if shapes.mpo_num_params(out_modes, in_modes, dims) <= dense / reduction:
            best = cap
    return best


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tltorch_peer(in_f, out_f, in_modes, out_modes, target: int, device, dtype):
    """tensorly-torch blocktt FactorizedLinear with the rank whose parameter count is closest to ``target``."""
    import tltorch

    def make(rank):
        return tltorch.FactorizedLinear(tuple(in_modes), tuple(out_modes), factorization="blocktt", rank=rank,
                                        device=device, dtype=dtype)

    best = min(range(1, 400), key=lambda r: abs(_blocktt_params(in_modes, out_modes, r) + out_f - target))
    return make(best), best


def _blocktt_params(in_modes, out_modes, rank):
    dims = [1] + [rank] * (len(in_modes) - 1) + [1]
    return sum(dims[k] * i * j * dims[k + 1] for k, (i, j) in enumerate(zip(out_modes, in_modes)))


def torch_mpo_peer(in_f, out_f, in_modes, out_modes, target: int, device, dtype):
    """torch-mpo TTLinear with the uniform rank whose parameter count is closest to ``target``."""
    from torch_mpo.layers import TTLinear

    best = min(range(1, 400), key=lambda r: abs(_blocktt_params(in_modes, out_modes, r) + out_f - target))
    layer = TTLinear(in_f, out_f, inp_modes=list(in_modes), out_modes=list(out_modes), tt_ranks=best,
                     device=device, dtype=dtype)
    return layer, best


def torch_mpo_intermediate(in_modes, out_modes, rank, tokens) -> int:
    """Largest intermediate of TTLinear's sequential contraction, in elements."""
    worst = 0
    for k in range(len(in_modes)):
        worst = max(worst, tokens * math.prod(out_modes[: k + 1]) * rank * math.prod(in_modes[k + 1:]))
    return worst


# ---------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _fwd(module, x, device):
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        module(x)
    _sync(device)
    return time.perf_counter() - start


def _train(module, x, device):
    module.zero_grad(set_to_none=True)
    xg = x.detach().requires_grad_(True)
    _sync(device)
    start = time.perf_counter()
    module(xg).float().square().mean().backward()
    _sync(device)
    return time.perf_counter() - start


def alternate(fn, modules, x, device, reps):
    """(median, min) time of ``fn`` per module, the modules run alternately ``reps`` times after one warm-up each."""
    for m in modules:
        fn(m, x, device)
    times = [[] for _ in modules]
    for _ in range(reps):
        for k, m in enumerate(modules):
            times[k].append(fn(m, x, device))
    return [(statistics.median(t), min(t)) for t in times]


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024


def memory_in_subprocess(script: str, settings: list) -> list:
    """Run ``script --memory-of JSON`` in a fresh interpreter whose glibc serves every allocation
    >= 64 KiB by mmap (``MALLOC_MMAP_THRESHOLD_=65536``), so freed tensors leave the RSS at once and
    the peak RSS of a step measures the tensors it held. Returns the JSON list it prints last.

    A separate process because the setting cannot be applied after the fact: blocks freed earlier
    under glibc's dynamic threshold stay in the heap and would be reused unseen (measured: 1.77x
    instead of 1.16x for one setting), and the timing phase must run with the default allocator.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    argv = [sys.executable, script, "--memory-of", json.dumps(settings), "--threads", str(torch.get_num_threads())]
    done = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_train_bytes(module, x, device) -> int:
    """Peak memory of one training step (see module docstring), parameters and input included."""
    module.zero_grad(set_to_none=True)
    xg = x.detach().requires_grad_(True)
    static = x.numel() * x.element_size()
    peak = peak_step_bytes(module, lambda: module(xg).float().square().mean().backward(), device)
    return static + peak


def peak_step_bytes(module, step, device) -> int:
    """Parameter bytes of ``module`` plus the peak memory ``step()`` allocates (gradients stay until the end)."""
    static = sum(p.numel() * p.element_size() for p in module.parameters())
    module.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _status_bytes("VmRSS")
        step()
        extra = _status_bytes("VmHWM") - base
    module.zero_grad(set_to_none=True)
    return static + max(extra, 0)


def _plan_name(plan: contract.ApplyPlan) -> str:
    if plan.path == "rebuild":
        return "R"
    return "".join(f"[{a}{b - 1}]" if b - a > 1 else f"[{a}]" for a, b in plan.groups) + plan.order


def bench_setting(in_f, out_f, tokens, cap, label, reps, device, dtype, peers=True):
    """Times and cost-model columns of one setting (memory: :func:`memory_setting`, run afterwards)."""
    mpo = MPOLinear(in_f, out_f, bond_dim=cap, device=device, dtype=dtype)
    dense = nn.Linear(in_f, out_f, device=device, dtype=dtype)
    mpo.eval(), dense.eval()
    x = torch.randn(tokens, in_f, device=device, dtype=dtype)
    om, im, bonds = mpo.out_modes, mpo.in_modes, mpo.bond_dims
    row = {
        "in": in_f, "out": out_f, "tokens": tokens, "label": label, "cap": cap,
        "reduction": mpo.dense_params / mpo.num_mpo_params,
        "ctr_flops": contract.contraction_flops(om, im, bonds, tokens) / contract.dense_flops(out_f, in_f, tokens),
        "plan_train": _plan_name(mpo.plan(tokens, grad_needed=True)),
        "plan_fwd": _plan_name(mpo.plan(tokens, grad_needed=False)),
    }
    candidates = {"mpo": mpo}
    if peers:
        target = n_params(mpo)
        try:
            tl, tl_rank = tltorch_peer(in_f, out_f, im, om, target, device, dtype)
            candidates["tltorch"] = tl
            row["tltorch_rank"] = tl_rank
        except Exception as exc:  # report, never hide
            row["tltorch_error"] = f"{type(exc).__name__}: {exc}"[:80]
        tt, tt_rank = torch_mpo_peer(in_f, out_f, im, om, target, device, dtype)
        row["torch_mpo_rank"] = tt_rank
        if torch_mpo_intermediate(im, om, tt_rank, tokens) <= MAX_PEER_INTERMEDIATE:
            candidates["torch_mpo"] = tt
        else:
            row["torch_mpo_error"] = f"skipped: intermediate of {torch_mpo_intermediate(im, om, tt_rank, tokens) / 1e6:.0f}M elements"
    for name, module in candidates.items():
        module.eval()
        # peers can be 10-50x slower than dense: fewer repetitions when one call is long
        probe = _train(module, x, device)
        n = 1 if probe > 2.0 else reps if probe > 0.1 else 3 * reps
        t_ref, t_mod = alternate(_fwd, [dense, module], x, device, n)
        row[f"{name}_fwd"], row[f"{name}_fwd_min"] = t_mod[0] / t_ref[0], t_mod[1] / t_ref[1]
        t_ref, t_mod = alternate(_train, [dense, module], x, device, n)
        row[f"{name}_train"], row[f"{name}_train_min"] = t_mod[0] / t_ref[0], t_mod[1] / t_ref[1]
        if name == "mpo":
            row["dense_train_s"] = t_ref[0]
    return row


def memory_setting(row, device, dtype) -> None:
    """Add ``mpo_mem`` (and ``tltorch_mem`` when the row has a tensorly-torch rank): peak training-step
    memory over nn.Linear's, fresh modules of the row's setting."""
    in_f, out_f, tokens = row["in"], row["out"], row["tokens"]
    mpo = MPOLinear(in_f, out_f, bond_dim=row["cap"], device=device, dtype=dtype).eval()
    dense = nn.Linear(in_f, out_f, device=device, dtype=dtype).eval()
    modules = {"dense": dense, "mpo": mpo}
    if row.get("tltorch_rank") is not None:
        modules["tltorch"] = tltorch_peer(in_f, out_f, mpo.in_modes, mpo.out_modes, n_params(mpo), device, dtype)[0].eval()
    x = torch.randn(tokens, in_f, device=device, dtype=dtype)
    for module in modules.values():  # warm-up: one-off allocations (thread pools, plan caches) stay out of the peak
        _train(module, x, device)
    dense_mem = peak_train_bytes(dense, x, device)
    for name, module in modules.items():
        if name != "dense":
            row[f"{name}_mem"] = peak_train_bytes(module, x, device) / dense_mem
    row["dense_mem_mb"] = dense_mem / 1e6


def _memory_phase(settings: list) -> None:
    """Child side of :func:`memory_in_subprocess`: memory columns of each setting, printed as one JSON list."""
    out = []
    for setting in tqdm(settings, desc="memory", unit="setting", file=sys.stderr):
        row = dict(setting)
        memory_setting(row, torch.device("cpu"), DTYPES[row["dtype"]])
        out.append({k: v for k, v in row.items() if k.endswith("_mem") or k == "dense_mem_mb"})
    print(json.dumps(out))


def fmt(v, width=6, digits=2):
    return f"{v:>{width}.{digits}f}" if isinstance(v, float) else f"{'-':>{width}}"


def run(quick=False, reps=None, device="cpu", dtype="fp32", peers=True):
    device = torch.device(device)
    torch_dtype = DTYPES[dtype]
    reps = reps or 3  # tripled for settings whose training step takes < 0.1 s
    settings = []
    for in_f, out_f in (SHAPES[:1] if quick else SHAPES):
        om, im = shapes.choose_modes(out_f, in_f, 5)
        caps = [(cap_for_reduction(om, im, in_f * out_f, r), f"{r}x") for r in ((1, 16, 64) if quick else REDUCTIONS)]
        caps += [(c, "extra") for c in (EXTRA_CAPS[:1] if quick else EXTRA_CAPS)]
        for tokens in (TOKENS[:1] if quick else TOKENS):
            for cap, label in caps:
                settings.append((in_f, out_f, tokens, cap, label))
    print(f"MPOLinear vs nn.Linear on {device} ({dtype}), {torch.get_num_threads()} thread(s), median of {reps} (x3 when a training step takes < 0.1 s, 1 when > 2 s); "
          f"ratios = candidate / nn.Linear (time: below 1 is faster; mem: peak of a training step)")
    head = (f"{'shape':>10} {'tok':>5} {'set':>5} {'cap':>4} {'fewer':>7} {'ctr/dn':>7} {'plan(train)':>14} {'plan(fwd)':>14} |"
            f" {'mpo fwd':>7} {'f+b':>6} {'mem':>5} {'min:fwd':>7} {'f+b':>5} | {'tl fwd':>6} {'f+b':>6} {'mem':>5} {'r':>3} | {'tm fwd':>6} {'f+b':>6} {'r':>3}")
    rows = [bench_setting(*setting, reps, device, torch_dtype, peers)
            for setting in tqdm(settings, desc="timing", unit="setting", file=sys.stderr)]
    if device.type == "cpu":
        keys = ("in", "out", "tokens", "cap", "tltorch_rank")
        mems = memory_in_subprocess(os.path.abspath(__file__), [{k: r.get(k) for k in keys} | {"dtype": dtype} for r in rows])
        for r, m in zip(rows, mems):
            r.update(m)
    else:  # CUDA peaks come from torch's allocator statistics, in this process
        for r in tqdm(rows, desc="memory", unit="setting", file=sys.stderr):
            memory_setting(r, device, torch_dtype)
    print(head)
    for r in rows:
        print(
            f"{r['in']:>4}->{r['out']:<5} {r['tokens']:>5} {r['label']:>5} {r['cap']:>4} {r['reduction']:>7.1f} {r['ctr_flops']:>7.2f} "
            f"{r['plan_train']:>14} {r['plan_fwd']:>14} | {fmt(r.get('mpo_fwd'), 7)} {fmt(r.get('mpo_train'))} {fmt(r.get('mpo_mem'), 5)} "
            f"{fmt(r.get('mpo_fwd_min'), 7)} {fmt(r.get('mpo_train_min'), 5)} | "
            f"{fmt(r.get('tltorch_fwd'))} {fmt(r.get('tltorch_train'))} {fmt(r.get('tltorch_mem'), 5)} {r.get('tltorch_rank', '-'):>3} | "
            f"{fmt(r.get('torch_mpo_fwd'))} {fmt(r.get('torch_mpo_train'))} {r.get('torch_mpo_rank', '-'):>3}"
            + (f"  [{r['torch_mpo_error']}]" if "torch_mpo_error" in r else "")
            + (f"  [tltorch {r['tltorch_error']}]" if "tltorch_error" in r else ""),
            flush=True,
        )
    summarize(rows)
    return rows


def summarize(rows):
    """Check the issue's targets against this run's numbers and print which hold."""
    worst_fwd = max(rows, key=lambda r: r["mpo_fwd"])
    worst_train = max(rows, key=lambda r: r["mpo_train"])
    print(f"target: auto path never slower than 1.1x dense: worst fwd {worst_fwd['mpo_fwd']:.2f} "
          f"({worst_fwd['in']}->{worst_fwd['out']}, {worst_fwd['tokens']} tok, {worst_fwd['label']}), worst f+b "
          f"{worst_train['mpo_train']:.2f} ({worst_train['in']}->{worst_train['out']}, {worst_train['tokens']} tok, "
          f"{worst_train['label']})")
    worst_fwd_min = max(r["mpo_fwd_min"] for r in rows)
    worst_train_min = max(r["mpo_train_min"] for r in rows)
    print(f"        (ratios of minimum times: worst fwd {worst_fwd_min:.2f}, worst f+b {worst_train_min:.2f})")
    cheap = [r for r in rows if r["ctr_flops"] <= 0.5]
    if cheap:
        misses = [r for r in cheap if r["mpo_fwd"] > 1 / 1.5]
        print(f"target: fwd >= 1.5x faster where contraction <= 0.5 dense FLOPs: {len(cheap) - len(misses)}/{len(cheap)} "
              f"settings hold" + ("" if not misses else "; misses: " + ", ".join(
                  f"{r['in']}->{r['out']} {r['tokens']} tok cap {r['cap']}: {r['mpo_fwd']:.2f} (min {r['mpo_fwd_min']:.2f})"
                  for r in misses)))
    for peer in ("tltorch", "torch_mpo"):
        both = [r for r in rows if f"{peer}_fwd" in r]
        lost = [r for r in both if r["mpo_fwd"] > r[f"{peer}_fwd"] or r["mpo_train"] > r[f"{peer}_train"]]
        print(f"target: faster than {peer}: {len(both) - len(lost)}/{len(both)} settings hold" + ("" if not lost else
              "; misses: " + ", ".join(f"{r['in']}->{r['out']} {r['tokens']} tok {r['label']}"
                                       + (f" (its memory {r[f'{peer}_mem']:.2f}x dense)" if f"{peer}_mem" in r else "")
                                       for r in lost)))
    worst_mem = max(rows, key=lambda r: r["mpo_mem"])
    print(f"target: peak memory <= 1.25x dense: worst {worst_mem['mpo_mem']:.2f} ({worst_mem['in']}->{worst_mem['out']}, "
          f"{worst_mem['tokens']} tok, {worst_mem['label']})")


def print_header() -> None:
    """Seed torch and print the date, torch version, thread count and the command line of this run."""
    torch.manual_seed(0)
    print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), command: python {' '.join(sys.argv)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="768->768, 512 tokens, 4 caps, no LSTM hidden 1024")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per setting (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--no-lstm", action="store_true")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # internal: the memory phase (JSON settings)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of is not None:
        _memory_phase(json.loads(args.memory_of))
        return
    print_header()
    run(quick=args.quick, reps=args.reps, device=args.device, dtype=args.dtype, peers=not args.no_peers)
    if not args.no_lstm:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        try:
            import bench_lstm
        except ImportError:
            print("bench_lstm.py not found: MPOLSTM benchmark skipped")
        else:
            print()
            bench_lstm.run(quick=args.quick)


if __name__ == "__main__":
    main()
