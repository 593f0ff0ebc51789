"""Per-layout output error of single MiniLM matrices at one budget: does any MPO layout beat whitened low rank?

For three matrices of all-MiniLM-L6-v2 (layer 0 query 384x384, layer 2 FFN in 1536x384, layer 2 FFN out
384x1536), the input second moments C come from Rotten Tomatoes sentences (``mpokit.calibration``). At
``--budget`` of each matrix's dense parameters it prints the relative output error ||(W - W')X|| / ||WX|| of
TT-SVD (n = 3, 4), truncated SVD, SVD-LLM (``svd-whitened``) and, for every candidate layout of
:func:`mpokit.aware.candidate_layouts`, the output-aware fit (:func:`mpokit.aware.fit_mpo`: its start, the
error after the ALS sweeps, and the time)::

    python -m mpokit.recipes.layout_gaps --sentences 1200 --budget 0.5 --sweeps 8 --out runs/layout_gaps.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

MATRICES = {"layer 0 query": "encoder.layer.0.attention.self.query",
            "layer 2 FFN in": "encoder.layer.2.intermediate.dense",
            "layer 2 FFN out": "encoder.layer.2.output.dense"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=1200)
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--sweeps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the markdown table (and .json beside it) here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModel, AutoTokenizer

    from ..aware import approximate, candidate_layouts, fit_mpo
    from ..calibration import collect_calibration
    from .data.rotten_tomatoes import read_sentences
    from .models import named_model_path

    path = named_model_path("all-MiniLM-L6-v2")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    texts = [t for t, _, _ in read_sentences()[: args.sentences]]
    batches = [dict(tokenizer(texts[i:i + 64], padding=True, truncation=True, max_length=64, return_tensors="pt"))
               for i in range(0, len(texts), 64)]
    stats = collect_calibration(model, batches, list(MATRICES.values()))
    lines = [f"{len(texts)} sentences, {stats.tokens} tokens; budget {args.budget:.0%} of each matrix; "
             f"relative output error (params)", "",
             "| matrix | method / layout | modes (out / in) | bonds | params | start | rel. output error | s |",
             "|---|---|---|---|---:|---|---:|---:|"]
    results: dict = {}
    for label, name in MATRICES.items():
        W = model.get_submodule(name).weight.detach()
        C = stats.second_moments[name]
        budget = int(W.numel() * args.budget)
        rows = results.setdefault(label, {})
        for method, kw in (("mpo", {"n_cores": 3}), ("mpo", {"n_cores": 4}), ("svd", {}), ("svd-whitened", {})):
            t0 = time.perf_counter()
            a = approximate(method, W, max_params=budget, C=C, **kw)
            key = method + (f" n={kw['n_cores']}" if kw else "")
            modes = f"{a.mpo.out_modes} / {a.mpo.in_modes}" if a.mpo is not None else "-"
            bonds = str(a.mpo.bond_dims) if a.mpo is not None else "-"
            rows[key] = {"error": a.rel_output_error, "params": a.params}
            lines.append(f"| {label} | {key} | {modes} | {bonds} | {a.params} | - | {a.rel_output_error:.4f} | "
                         f"{time.perf_counter() - t0:.1f} |")
        for layout in candidate_layouts(*W.shape):
            t0 = time.perf_counter()
            fit = fit_mpo(W, C, out_modes=layout.out_modes, in_modes=layout.in_modes, max_params=budget,
                          max_sweeps=args.sweeps, tol=1e-4)
            rows["aware " + layout.name] = {"error": fit.history[-1], "start": fit.history[0], "init": fit.init,
                                            "params": fit.mpo.num_params, "bonds": list(fit.mpo.bond_dims)}
            lines.append(f"| {label} | mpo-aware {layout.name} | {layout.out_modes} / {layout.in_modes} | "
                         f"{fit.mpo.bond_dims} | {fit.mpo.num_params} | {fit.init} {fit.history[0]:.4f} | "
                         f"{fit.history[-1]:.4f} | {time.perf_counter() - t0:.1f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
