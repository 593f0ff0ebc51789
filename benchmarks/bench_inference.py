"""Inference of MPO-compressed models against their dense originals: load time, memory and throughput, side by side.

Models (``--models``): ``minilm`` (all-MiniLM-L6-v2, the encoder) and ``smollm2`` (SmolLM2-135M-Instruct, a
causal LM whose head is tied to the word embedding), each as

* ``dense``: the original (SmolLM2 is de-quantised from its GGUF file once and saved as safetensors, so every
  variant loads from safetensors);
* ``mpo50`` / ``mpo25``: every targeted matrix (attention, FFN, pooler, word embedding) MPO-compressed by TT-SVD
  to 50% / 25% of its dense parameters (``MPOLayerConfig(param_ratio=...)``, as ``mpokit compress --budget``),
  saved once with ``mpokit.save_pretrained`` and loaded with ``mpokit.from_pretrained``, under every inference
  policy of ``--policies`` (``mpokit.inference.set_inference_mode``);
* ``svd50`` / ``svd25`` (``--methods mpo,svd``): the same matrices as truncated SVDs, i.e. MPOs of the 2-core
  low-rank layout (``MPOConfig(method="svd")``), whose contraction is two thin matmuls and never forms ``W``;
* ``merged50`` / ``merged25``: the compressed model merged back to dense (``mpokit.merge_and_unload``), saved and
  loaded as a transformers model.

The compressed and merged checkpoints are written once into ``runs/bench_inference_cache/`` (git-ignored) and
reused by later runs.

Each case runs in its own Python process, whose glibc serves every allocation >= 64 KiB by mmap
(``MALLOC_MMAP_THRESHOLD_=65536``, as in bench_layers.py), so freed tensors leave the RSS at once. Memory
is "model memory": peak RSS minus the RSS right after ``import torch, transformers, mpokit`` (on CUDA: the
peak of ``torch.cuda.max_memory_allocated``). Columns:

* ``load s`` / ``load MiB``: time and peak model memory of loading;
* ``peak MiB`` (per workload): peak model memory while it runs (the VmHWM is reset to the current RSS at its
  start), so it holds the model, what the policy builds (dense caches, the shared workspace) and the
  activations;
* MiniLM: ``s/batch`` for a batch of 32 x 64 tokens (median of ``--reps`` after one warm-up call);
* SmolLM2: ``prefill s`` for 4 x 256 tokens (one forward that starts the key/value cache, logits of the last
  position only, as ``generate`` does), and ``gen tok/s`` for greedy generation of 64 new tokens after a
  32-token prompt (batch 1, ``min_new_tokens=64``);
* with ``--rounds N`` the whole list of cases runs N times, and each case keeps its fastest times (a shared
  machine's load drifts during a run; the rounds spread that over all cases);
* ratios (``x``) are against ``dense`` of the same run: memory / dense memory, throughput / dense throughput.
* ``tokens``: the generated tokens equal those of the same checkpoint under ``cache`` (``=``) or not (``!``).

With ``--onnx`` (CPU, MiniLM) the dense and MPO checkpoints are also exported as ONNX files
(:func:`mpokit.export.export_onnx`, once, into the cache; each checked against PyTorch with onnxruntime
at two shapes) and run in onnxruntime: file size, the check's max relative difference, load time, peak
memory (above the RSS after ``import numpy, onnxruntime``) and s/batch, ratios against the dense file.

Writes ``results.json`` and ``results.md`` into ``--out`` and prints the table.

    python benchmarks/bench_inference.py --threads 1                   # everything
    python benchmarks/bench_inference.py --quick --models minilm       # a short run (smaller workloads)
    python benchmarks/bench_inference.py --device cuda --random-weights --quick   # a device without the model packages
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "runs" / "bench_inference_cache"
COMPRESSED = ("mpo", "svd")  # methods of the compressed variants (mpokit.aware.METHODS keys)
POLICIES = ("cache", "stream", "contract", "auto")
RATIOS = (0.5, 0.25)
TIMES = ("load_s", "s_per_batch", "prefill_s", "gen_s")  # per case, the minimum over --rounds


@dataclass(frozen=True)
class Workload:
    batch: int
    length: int
    prefill_batch: int = 0
    prefill_length: int = 0
    prompt: int = 0
    new_tokens: int = 0


@dataclass(frozen=True)
class ModelSpec:
    key: str
    name: str  # a recipe name (mpokit.recipes.models)
    lm: bool
    full: Workload
    quick: Workload


MODELS = {
    "minilm": ModelSpec("minilm", "all-MiniLM-L6-v2", False, Workload(32, 64), Workload(8, 64)),
    "smollm2": ModelSpec("smollm2", "SmolLM2-135M-Instruct", True,
                         Workload(0, 0, 4, 256, 32, 64), Workload(0, 0, 2, 64, 16, 16)),
}


def _random_config(key: str):
    """The architecture of ``key`` with random weights (for a device without the model packages)."""
    import transformers as T

    if key == "minilm":
        return T.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                            intermediate_size=1536, max_position_embeddings=512)
    return T.LlamaConfig(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, max_position_embeddings=8192,
                         tie_word_embeddings=True, rope_theta=100000.0, bos_token_id=1, eos_token_id=2)


# ---------------------------------------------------------------------------
# memory probes
# ---------------------------------------------------------------------------


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class Memory:
    """Peak model memory in MiB: RSS above ``base`` on the CPU, allocated CUDA memory on a GPU."""

    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch
        self.base = 0.0 if self.cuda else _status_mib("VmRSS")

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS

    def peak(self) -> float:
        if self.cuda:
            self.torch.cuda.synchronize()
            return self.torch.cuda.max_memory_allocated() / 2**20
        return _status_mib("VmHWM") - self.base

    def now(self) -> float:
        if self.cuda:
            return self.torch.cuda.memory_allocated() / 2**20
        return _status_mib("VmRSS") - self.base


# ---------------------------------------------------------------------------
# one case (in its own process)
# ---------------------------------------------------------------------------


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _load(case: dict):
    import torch
    import transformers as T

    import mpokit

    device = case["device"]
    if case["variant"].startswith(COMPRESSED):
        policy = case["policy"]
        model = mpokit.from_pretrained(case["folder"], device=device)
        if policy is not None:
            from mpokit.inference import set_inference_mode

            set_inference_mode(model, policy)
        return model.eval()
    cls = T.AutoModelForCausalLM if case["lm"] else T.AutoModel
    model = cls.from_pretrained(case["folder"], dtype=torch.float32)
    return model.to(device).eval()


def _timed(fn, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def run_case(case: dict) -> dict:
    import torch
    import transformers  # noqa: F401  (the baseline RSS includes it)

    import mpokit  # noqa: F401

    device = case["device"]
    if case["threads"]:
        torch.set_num_threads(case["threads"])
    mem = Memory(device)
    mem.reset()
    start = time.perf_counter()
    model = _load(case)
    _sync(device)
    out = {"load_s": time.perf_counter() - start, "load_mib": mem.peak(), "resident_mib": mem.now(),
           "params": sum(p.numel() for p in model.parameters())}
    w = Workload(**case["workload"])
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        if not case["lm"]:
            ids = torch.randint(0, vocab, (w.batch, w.length), generator=g).to(device)
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            mem.reset()
            model(**batch)  # warm-up: a caching policy builds its caches here
            times = [_timed(lambda: model(**batch), device) for _ in range(case["reps"])]
            out.update(s_per_batch=statistics.median(times), infer_mib=mem.peak(), tokens=w.batch * w.length)
        else:
            ids = torch.randint(0, vocab, (w.prefill_batch, w.prefill_length), generator=g).to(device)
            mask = torch.ones_like(ids)
            mem.reset()
            model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)  # warm-up
            times = [_timed(lambda: model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1), device)
                     for _ in range(case["reps"])]
            out.update(prefill_s=statistics.median(times), prefill_mib=mem.peak(),
                       prefill_tokens=w.prefill_batch * w.prefill_length)
            prompt = torch.randint(0, vocab, (1, w.prompt), generator=g).to(device)
            settings = dict(attention_mask=torch.ones_like(prompt), do_sample=False, pad_token_id=0)
            mem.reset()
            model.generate(prompt, max_new_tokens=2, min_new_tokens=2, **settings)  # warm-up
            result = {}

            def generate():
                result["ids"] = model.generate(prompt, max_new_tokens=w.new_tokens, min_new_tokens=w.new_tokens,
                                               **settings)

            times = [_timed(generate, device) for _ in range(max(1, case["reps"] // 2))]
            out.update(gen_s=statistics.median(times), gen_mib=mem.peak(), new_tokens=w.new_tokens,
                       generated=result["ids"][0, w.prompt:].tolist())
    return out


# ---------------------------------------------------------------------------
# preparing the checkpoints (once, each in its own process)
# ---------------------------------------------------------------------------


def _dense_folder(spec: ModelSpec, random_weights: bool) -> Path:
    if not random_weights and not spec.lm:
        from mpokit.recipes.models import resolve_model_source

        return Path(resolve_model_source(spec.name))  # an installed transformers folder already
    return CACHE / (f"{spec.key}-random-dense" if random_weights else f"{spec.key}-dense")


def _prepared(folder: Path) -> bool:
    if folder.suffix == ".onnx":
        return folder.is_file() and folder.with_suffix(".json").is_file()
    return (folder / "mpo_config.json").is_file() or (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def prepare(job: dict) -> None:
    """Write one checkpoint: ``dense`` (the original as safetensors, or random weights), ``mpo`` (compressed),
    ``merged`` (the compressed model merged back to dense)."""
    import torch
    import transformers as T

    import mpokit

    spec, out = MODELS[job["model"]], Path(job["out"])
    if job["kind"] == "dense":
        if job["random_weights"]:
            torch.manual_seed(0)
            cls = T.LlamaForCausalLM if spec.lm else T.BertModel
            model = cls(_random_config(spec.key))
        else:
            from mpokit.loading import load_model
            from mpokit.recipes.models import resolve_model_source

            loaded = load_model(resolve_model_source(spec.name), task="lm" if spec.lm else None,
                                with_tokenizer=False).model
            # a model read from a GGUF file refuses save_pretrained (it counts as quantised): copy its
            # de-quantised float32 weights into a plain model of the same config
            config = loaded.config
            for attr in ("quantization_config",):
                if hasattr(config, attr):
                    delattr(config, attr)
            model = type(loaded)(config)
            model.load_state_dict(loaded.state_dict())
            model.tie_weights()
        model.save_pretrained(str(out))
    elif job["kind"] == "mpo":
        cls = T.AutoModelForCausalLM if spec.lm else T.AutoModel
        model = cls.from_pretrained(job["source"], dtype=torch.float32).eval()
        layer = mpokit.MPOLayerConfig(param_ratio=job["ratio"])
        config = mpokit.MPOConfig(attention=layer, ffn=layer, other=layer, embedding=layer,
                                  method=job.get("method", "mpo"))
        start = time.perf_counter()
        model, report = mpokit.compress(model, config, return_report=True)
        seconds = time.perf_counter() - start
        mpokit.save_pretrained(model, out, overwrite=True)
        (out / "bench_report.json").write_text(json.dumps(
            {"compress_seconds": seconds, "model_params_before": report.model_params_before,
             "model_params_after": report.model_params_after, "matrix_params_before": report.matrix_params_before,
             "matrix_params_after": report.matrix_params_after}, indent=2))
    elif job["kind"] == "merged":
        model = mpokit.merge_and_unload(mpokit.from_pretrained(job["source"]))
        model.save_pretrained(str(out))
    else:  # onnx: the checkpoint in `source` as an ONNX file, checked with onnxruntime
        from mpokit.export import check_onnx, export_onnx, onnx_sizes

        source = Path(job["source"])
        if (source / "mpo_config.json").is_file():
            model = mpokit.from_pretrained(source)
        else:
            model = T.AutoModel.from_pretrained(str(source), dtype=torch.float32).eval()
        g = torch.Generator().manual_seed(0)
        example = {"input_ids": torch.randint(0, model.config.vocab_size, (2, 16), generator=g)}
        example["attention_mask"] = torch.ones_like(example["input_ids"])
        other = {"input_ids": torch.randint(0, model.config.vocab_size, (3, 19), generator=g)}
        other["attention_mask"] = torch.ones_like(other["input_ids"])
        export_onnx(model, out, example)
        diff = max(check_onnx(out, model, example), check_onnx(out, model, other))
        sizes = onnx_sizes(out, model)
        out.with_suffix(".json").write_text(json.dumps({"max_rel_diff": diff, **sizes}, indent=2, default=str))


def _subprocess(flag: str, payload: dict, timeout: float | None, memory_env: bool = False) -> dict | None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    if memory_env:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    argv = [sys.executable, os.path.abspath(__file__), flag, json.dumps(payload)]
    try:
        done = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"exit {done.returncode}: {tail[0][:300]}"}
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def ensure_checkpoints(spec: ModelSpec, ratios, random_weights: bool, timeout: float | None,
                       methods=("mpo",)) -> dict[str, Path]:
    """``{variant: folder}``, writing what is missing into :data:`CACHE`."""
    folders = {"dense": _dense_folder(spec, random_weights)}
    suffix = "-random" if random_weights else ""
    jobs = [("dense", folders["dense"], {})]
    for r in ratios:
        pct = round(r * 100)
        for method in methods:
            folders[f"{method}{pct}"] = CACHE / f"{spec.key}{suffix}-{method}{pct}"
            jobs.append(("mpo", folders[f"{method}{pct}"], {"ratio": r, "method": method, "source": str(folders["dense"])}))
        if "mpo" in methods:
            folders[f"merged{pct}"] = CACHE / f"{spec.key}{suffix}-merged{pct}"
            jobs.append(("merged", folders[f"merged{pct}"], {"source": str(folders[f"mpo{pct}"])}))
    for kind, folder, extra in jobs:
        if _prepared(folder):
            continue
        print(f"[prepare] {spec.key} {kind} -> {folder}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = _subprocess("--prepare", {"model": spec.key, "kind": kind, "out": str(folder),
                                           "random_weights": random_weights, **extra}, timeout)
        if result and "error" in result:
            raise SystemExit(f"preparing {folder} failed: {result['error']}")
        print(f"[prepare] done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return folders


def ensure_onnx(spec: ModelSpec, folders: dict[str, Path], timeout: float | None) -> dict[str, Path]:
    """``{variant: file.onnx}`` for the dense and MPO variants, exported (and checked) once into :data:`CACHE`."""
    files = {}
    for variant, folder in folders.items():
        if variant.startswith("merged"):
            continue  # the same file as dense, in size and structure
        path = CACHE / "onnx" / f"{folder.name}.onnx"
        if not _prepared(path):
            print(f"[prepare] {spec.key} {variant} -> {path}", file=sys.stderr, flush=True)
            result = _subprocess("--prepare", {"model": spec.key, "kind": "onnx", "out": str(path),
                                               "source": str(folder), "random_weights": False}, timeout)
            if result and "error" in result:
                raise SystemExit(f"exporting {path} failed: {result['error']}")
        files[variant] = path
    return files


def run_onnx_case(case: dict) -> dict:
    """An encoder's ONNX file in onnxruntime (CPU): load time, peak memory of loading and of the batches, s/batch."""
    import numpy as np
    import onnxruntime as ort

    base = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    options = ort.SessionOptions()
    if case["threads"]:
        options.intra_op_num_threads = case["threads"]
    start = time.perf_counter()
    session = ort.InferenceSession(case["file"], options, providers=["CPUExecutionProvider"])
    out = {"load_s": time.perf_counter() - start, "load_mib": _status_mib("VmHWM") - base}
    w = Workload(**case["workload"])
    rng = np.random.default_rng(0)
    ids = rng.integers(0, case["vocab"], (w.batch, w.length), dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    session.run(None, feed)
    times = []
    for _ in range(case["reps"]):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    summary = json.loads(Path(case["file"]).with_suffix(".json").read_text())
    out.update(s_per_batch=statistics.median(times), infer_mib=_status_mib("VmHWM") - base,
               tokens=w.batch * w.length, onnx_bytes=summary["file"], max_rel_diff=summary["max_rel_diff"])
    return out


def onnx_table(rows: list[dict]) -> str:
    """The onnxruntime rows, ratios against the dense file's row."""
    dense = next((r for r in rows if r["variant"] == "dense" and "error" not in r), None)
    head = ["variant", "file MiB", "x", "max rel. diff", "load s", "load MiB", "x", "peak MiB", "x", "s/batch", "thr x"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} |" + " |" * (len(head) - 2))
            continue
        x = (lambda k, inv=False: _f(_ratio(r[k], dense[k], inv)) if dense else "-")
        lines.append("| " + " | ".join([
            r["variant"], _f(r["onnx_bytes"] / 2**20, ".1f"), x("onnx_bytes"), _f(r["max_rel_diff"], ".1e"),
            _f(r["load_s"]), _f(r["load_mib"], ".0f"), x("load_mib"), _f(r["infer_mib"], ".0f"), x("infer_mib"),
            _f(r["s_per_batch"], ".3f"), x("s_per_batch", True)]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


def policies_available() -> tuple[bool, str]:
    try:
        import mpokit.inference  # noqa: F401
    except Exception as e:  # noqa: BLE001 - not written yet, or broken
        return False, f"{type(e).__name__}: {e}"
    return True, ""


def _ratio(value, ref, invert: bool = False):
    if value is None or ref in (None, 0):
        return None
    return ref / value if invert else value / ref


def add_ratios(rows: list[dict]) -> None:
    """``x_*`` fields against the ``dense`` row of the same model."""
    dense = {r["model"]: r for r in rows if r["variant"] == "dense" and "error" not in r}
    cache_tokens = {(r["model"], r["variant"]): r.get("generated") for r in rows if r.get("policy") == "cache"}
    for r in rows:
        d = dense.get(r["model"])
        if d is None or "error" in r:
            continue
        for key in ("load_mib", "infer_mib", "prefill_mib", "gen_mib", "resident_mib"):
            r[f"x_{key}"] = _ratio(r.get(key), d.get(key))
        r["x_load_s"] = _ratio(r.get("load_s"), d.get("load_s"))
        for key in ("s_per_batch", "prefill_s", "gen_s"):  # throughput ratios: dense time / time
            r[f"x_{key}"] = _ratio(r.get(key), d.get(key), invert=True)
        ref = cache_tokens.get((r["model"], r["variant"]))
        if r.get("generated") is not None and ref is not None:
            r["same_tokens"] = r["generated"] == ref


def _f(value, spec: str = ".2f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(rows: list[dict], model: str) -> str:
    lm = MODELS[model].lm
    head = ["variant", "policy", "params", "load s", "load MiB", "x"]
    head += (["prefill peak MiB", "x", "prefill s", "thr x", "gen peak MiB", "x", "gen tok/s", "thr x", "tokens"] if lm
             else ["peak MiB", "x", "s/batch", "thr x"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["model"] != model:
            continue
        cells = [r["variant"], r.get("policy") or "-"]
        if "error" in r:
            lines.append("| " + " | ".join(cells + [f"failed: {r['error']}"] + [""] * (len(head) - 3)) + " |")
            continue
        cells += [f"{r['params'] / 1e6:.1f}M", _f(r["load_s"]), _f(r["load_mib"], ".0f"), _f(r.get("x_load_mib"))]
        if lm:
            tok_s = r["new_tokens"] / r["gen_s"]
            same = {True: "=", False: "!", None: "-"}[r.get("same_tokens")]
            cells += [_f(r["prefill_mib"], ".0f"), _f(r.get("x_prefill_mib")), _f(r["prefill_s"]),
                      _f(r.get("x_prefill_s")), _f(r["gen_mib"], ".0f"), _f(r.get("x_gen_mib")), _f(tok_s, ".1f"),
                      _f(r.get("x_gen_s")), same]
        else:
            cells += [_f(r["infer_mib"], ".0f"), _f(r.get("x_infer_mib")), _f(r["s_per_batch"], ".3f"),
                      _f(r.get("x_s_per_batch"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,smollm2", help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help="comma-separated inference policies of the compressed models, from: " + ", ".join(POLICIES))
    parser.add_argument("--ratios", default=",".join(map(str, RATIOS)),
                        help="comma-separated parameter fractions of the compressed variants (default 0.5,0.25)")
    parser.add_argument("--methods", default="mpo",
                        help="comma-separated compression methods of the compressed variants, from: "
                             + ", ".join(COMPRESSED) + " (default mpo: TT-SVD; svd: the 2-core low-rank layout)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per case (default: torch's choice)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per workload (default 3, --quick 1)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the whole list of cases this many times and keep each case's fastest times (memory "
                             "and tokens from its first round); default 1")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 50%% only, smaller workloads (MiniLM 8 x 64; SmolLM2 prefill 2 x 64, 16 new "
                             "tokens), one repetition")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights of the same architectures (no model packages needed, e.g. on a GPU machine)")
    parser.add_argument("--onnx", action="store_true",
                        help="also export the encoder's dense and MPO variants as ONNX (mpokit.export, cached) and run "
                             "them in onnxruntime: file size, the check against PyTorch, memory and s/batch")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per case before it is recorded as failed")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_inference"), help="folder for results.json / .md")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one measurement (JSON)
    parser.add_argument("--prepare", default=None, help=argparse.SUPPRESS)  # internal: write one checkpoint (JSON)
    parser.add_argument("--onnx-case", default=None, help=argparse.SUPPRESS)  # internal: one onnxruntime case (JSON)
    args = parser.parse_args(argv)
    if args.case is not None:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0
    if args.onnx_case is not None:
        print(json.dumps(run_onnx_case(json.loads(args.onnx_case))))
        return 0
    if args.prepare is not None:
        prepare(json.loads(args.prepare))
        print("{}")
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = ([m for m in models if m not in MODELS] + [p for p in policies if p not in POLICIES]
           + [m for m in methods if m not in COMPRESSED])
    if bad:
        parser.error(f"unknown model or policy {bad}; models: {sorted(MODELS)}, policies: {POLICIES}")
    try:
        ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--ratios must be numbers in (0, 1], got {args.ratios!r}; e.g. --ratios 0.5,0.25")
    if args.quick:
        ratios = ratios[:1]
    reps = args.reps or (1 if args.quick else 3)
    available, why = policies_available()
    if not available:
        print(f"mpokit.inference cannot be imported ({why}): the policies cannot run; the compressed models run "
              "with their default behaviour (the per-layer dense cache) only", file=sys.stderr)
        policies = [None]
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_before = _load_average()
    rows, onnx_rows = [], []
    for key in models:
        spec = MODELS[key]
        folders = ensure_checkpoints(spec, ratios, args.random_weights, args.timeout, methods)
        cases = [("dense", None)]
        for r in ratios:
            pct = round(r * 100)
            for method in methods:
                cases += [(f"{method}{pct}", p) for p in policies]
            if "mpo" in methods:
                cases.append((f"merged{pct}", None))
        done: dict[tuple, dict] = {}
        for round_ in range(args.rounds):  # later rounds keep each time's minimum: load drifts on a shared machine
            for variant, policy in cases:
                case = {"model": key, "variant": variant, "policy": policy, "folder": str(folders[variant]),
                        "lm": spec.lm, "device": args.device, "threads": args.threads, "reps": reps,
                        "workload": vars(spec.quick if args.quick else spec.full)}
                print(f"[case] round {round_ + 1} {key} {variant} {policy or ''}", file=sys.stderr, flush=True)
                result = _subprocess("--case", case, args.timeout, memory_env=True) or {}
                row = done.get((variant, policy))
                if row is None or "error" in row:
                    row = {"model": key, "variant": variant, "policy": policy, **result}
                    report = folders[variant] / "bench_report.json"
                    if report.is_file():
                        row["compression"] = json.loads(report.read_text())
                    done[(variant, policy)] = row
                elif "error" not in result:
                    for k in TIMES:
                        if k in result:
                            row[k] = min(row[k], result[k])
                print(f"[case] {json.dumps({k: v for k, v in result.items() if k != 'generated'})}",
                      file=sys.stderr, flush=True)
        rows += list(done.values())
        if args.onnx and not spec.lm and args.device == "cpu":
            for variant, path in ensure_onnx(spec, folders, args.timeout).items():
                vocab = json.loads((folders["dense"] / "config.json").read_text())["vocab_size"]
                case = {"file": str(path), "vocab": vocab, "threads": args.threads, "reps": reps,
                        "workload": vars(spec.quick if args.quick else spec.full)}
                print(f"[onnx] {key} {variant}", file=sys.stderr, flush=True)
                result = _subprocess("--onnx-case", case, args.timeout, memory_env=True)
                onnx_rows.append({"model": key, "variant": variant, **(result or {})})
                print(f"[onnx] {json.dumps(onnx_rows[-1])}", file=sys.stderr, flush=True)
    add_ratios(rows)
    import torch

    meta = {"command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]) if argv is None else argv,
            "started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "torch": torch.__version__,
            "device": args.device, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": _load_average(),
            "reps": reps, "rounds": args.rounds, "quick": args.quick, "random_weights": args.random_weights, "policies_available": available}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "onnx_rows": onnx_rows}, indent=2))
    md = [f"# bench_inference ({meta['started']} - {meta['finished']})", "",
          f"torch {meta['torch']}, device {args.device}, threads {args.threads or 'default'}, {meta['cpus']} CPUs, "
          f"load average {load_before} before / {meta['load_average_after']} after, reps {reps}, rounds {args.rounds}"
          + (", quick" if args.quick else "") + (", random weights" if args.random_weights else ""), ""]
    for key in models:
        md += [f"## {MODELS[key].name}", "", table(rows, key), ""]
        if any(r["model"] == key for r in onnx_rows):
            md += [f"### {MODELS[key].name} in onnxruntime (ONNX files from mpokit.export)", "",
                   onnx_table([r for r in onnx_rows if r["model"] == key]), ""]
    (out / "results.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
