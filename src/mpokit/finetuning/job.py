"""The whole fine-tuning job on HF Accelerate: read and check the data, load the model, prepare it for the
method, train with evaluation each epoch, keep the best, resume, test, report (JSON + markdown)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text, check_output_dir
from ..inputs import build_loaders, read_data
from ..surgery import count_parameters
from ..training import (PeakMemory, build_optimizer, linear_warmup_decay, load_training_state, read_training_state,
                        save_training_state, set_seed, train_steps)
from .models import prepare_model, reinit_head
from .report import build_report, markdown
from .settings import RESUME_MAY_CHANGE, FinetuneConfig
from .state import load_best, save_model

__all__ = ["finetune", "load_for_task"]


def finetune(config: FinetuneConfig | None = None, **overrides) -> dict[str, Any]:
    """Run one fine-tuning job; returns the report dict (also written to ``output_dir/report.{json,md}``).

    Same code on CPU, one GPU or several processes (``accelerate launch``). Each epoch: train, evaluate
    on validation, keep the best model (by the task's primary metric: accuracy, MSE or perplexity) in
    ``output_dir/best``, and the resume state in ``output_dir/last``. At the end the best model is
    evaluated on test. Every option, the data and the model are checked before any training.
    """
    from accelerate import Accelerator

    if config is None:
        config = FinetuneConfig(**overrides)
    elif overrides:
        config = FinetuneConfig(**{**config.to_dict(), **overrides})
    config.validate()
    out = check_output_dir(config.output_dir)
    resume_dir = out / "last"
    saved = read_training_state(resume_dir) if config.resume else None
    if saved is not None:
        _check_resume_settings(saved["config"], config, resume_dir)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    accelerator = Accelerator(cpu=config.cpu)
    set_seed(config.seed)
    spec = config.data_spec()
    data, task = read_data(spec)
    if data.validation is None and not config.compress_only:  # before the model is loaded
        raise ValueError("the data has no validation split; give --validation-data F or --validation-split 0.1")
    model, tokenizer, info = load_for_task(config, task, data)
    _check_save_targets(model, out, config)
    if config.compress_only:
        return _compress_only(model, tokenizer, info, out, accelerator)
    loaders = build_loaders(task, data, tokenizer, spec, batch_size=config.batch_size,
                            eval_batch_size=config.eval_batch_size, shuffle_seed=config.seed)
    for split in ("train", "validation"):
        if getattr(loaders, split) is None:
            raise ValueError(f"the data has no {split} split; give --validation-data F or --validation-split 0.1")
    total_params = count_parameters(model)
    trainable_params = count_parameters(model, trainable_only=True)
    optimizer = build_optimizer(model, config.lr, config.mpo_lr, config.weight_decay)
    steps_per_epoch = math.ceil(len(loaders.train) / max(accelerator.num_processes, 1))
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    total_steps = steps_per_epoch * config.epochs
    scheduler = linear_warmup_decay(optimizer, total_steps, int(config.warmup_ratio * total_steps))
    held_out = [s for s in ("validation", "test") if getattr(loaders, s) is not None]
    prepared = accelerator.prepare(model, optimizer, loaders.train, *[getattr(loaders, s) for s in held_out], scheduler)
    model, optimizer, train_dl, *eval_dls, scheduler = prepared
    eval_dl = dict(zip(held_out, eval_dls))
    shuffle = {"shuffle": loaders.shuffle_generator}

    metric, _ = task.primary_metric
    history: list[dict] = []
    start_epoch, best = 0, {metric: None, "epoch": None}
    before: dict[str, dict] = {}
    if saved is not None:
        state = load_training_state(resume_dir, accelerator.unwrap_model(model), optimizer=optimizer,
                                    scheduler=scheduler, generators=shuffle)
        start_epoch, best, history, before = state["epoch"] + 1, state["best"], state["history"], state["before"]
        accelerator.print(f"resumed from {resume_dir} after epoch {state['epoch'] + 1}")
    elif config.eval_before:
        before = {s: task.evaluate(model, dl, accelerator, progress=f"{s} (before)" if config.progress else False)
                  for s, dl in eval_dl.items()}

    note = (f"{task.name}; train {loaders.sizes['train']:,} of {loaders.full_sizes['train']:,} "
            f"{loaders.info['size_unit']}, max_length {config.max_length}, {config.epochs} epoch(s)")
    if config.max_steps_per_epoch:
        note += f", at most {config.max_steps_per_epoch} steps per epoch"
    if "report" in info and config.progress:
        accelerator.print(f"compressed in {info['compress_seconds']:.1f}s:\n{info['report'].table()}")
    accelerator.print(f"[{config.method}] #To {total_params:,}  #Ft {trainable_params:,}  ({note})")
    wall0 = time.perf_counter()
    end_epoch = config.epochs if config.stop_after_epochs is None else min(config.epochs, start_epoch + config.stop_after_epochs)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        with PeakMemory() as mem:
            tr = train_steps(model, train_dl, optimizer, accelerator=accelerator, scheduler=scheduler,
                             max_grad_norm=config.max_grad_norm, max_steps=config.max_steps_per_epoch,
                             progress=f"epoch {epoch + 1}/{config.epochs}" if config.progress else False)
        train_seconds = time.perf_counter() - t0
        val = task.evaluate(model, eval_dl["validation"], accelerator, progress="validation" if config.progress else False)
        row = {"epoch": epoch + 1, "train_loss": tr["loss"], "steps": tr["steps"], "train_seconds": train_seconds,
               "seconds_per_step": train_seconds / max(tr["steps"], 1), "peak_rss_mib": mem.peak_mib,
               "rss_before_mib": mem.start_mib, "cuda_peak_mib": mem.cuda_peak_mib, "validation": val}
        history.append(row)
        accelerator.print(f"epoch {epoch + 1}: train loss {tr['loss']:.4f}  validation {metric} {val[metric]:.4f}  "
                          f"{train_seconds:.1f}s ({row['seconds_per_step']:.2f} s/step)  peak RSS {mem.peak_mib:.0f} MiB")
        if task.is_better(val[metric], best[metric]):
            best = {metric: val[metric], "epoch": epoch + 1}
            if config.save_best and accelerator.is_main_process:
                save_model(accelerator.unwrap_model(model), out / "best", tokenizer, source=info.get("source"))
        accelerator.wait_for_everyone()
        if config.save_last and accelerator.is_main_process:
            save_training_state(resume_dir, accelerator.unwrap_model(model), optimizer=optimizer, scheduler=scheduler,
                                generators=shuffle,
                                state={"epoch": epoch, "best": best, "history": history, "before": before,
                                       "config": config.to_dict()})
        accelerator.wait_for_everyone()

    if config.save_best and (out / "best").exists() and best["epoch"] is not None:
        load_best(accelerator.unwrap_model(model), out / "best")
    test = (task.evaluate(model, eval_dl["test"], accelerator, progress="test" if config.progress else False)
            if "test" in eval_dl else None)
    report = build_report(config, task, loaders, info, history, best, test, before, accelerator,
                          total_params=total_params, trainable_params=trainable_params,
                          wall_seconds=time.perf_counter() - wall0, note=note)
    if accelerator.is_main_process:
        atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str))
        atomic_write_text(out / "report.md", markdown(report))
        if config.progress:
            accelerator.print("\n" + markdown(report))
    result = f"test {metric} {test[metric]:.4f}" if test else "no test split"
    accelerator.print(f"[{config.method}] {result} (best epoch {best['epoch']}); report: {out / 'report.md'}")
    return report


def load_for_task(config: FinetuneConfig, task, data):
    """``(model, tokenizer, info)``: the model of ``config`` loaded for ``task`` (head sized from ``data``),
    prepared for ``config.method``. ``init_from`` loads an mpokit checkpoint and re-draws its head from
    ``config.seed``, exactly as a new head would be drawn."""
    from ..loading import load_model

    kwargs = task.model_kwargs(data)
    if config.init_from is not None:
        loaded = load_model(config.init_from, task=task.name, **kwargs)
        if not loaded.info.get("mpo"):
            raise ValueError(f"--init-from {config.init_from!r} holds no MPO model; write one with --compress-only")
        reinit_head(loaded.model, config.seed)
    else:
        loaded = load_model(config.model_path, task=task.name, seed=config.seed, **kwargs)
    task.check_model(loaded.model, data)
    model, info = prepare_model(loaded.model, config.method, task=task.name, param_ratio=config.param_ratio,
                                max_bond=config.max_bond, lora_rank=config.lora_rank)
    source = {"path": str(Path(loaded.path).resolve()), "kind": loaded.kind, "task": task.name,
              **{k: v for k, v in loaded.info.items() if k == "gguf_file"},
              **({"id2label": kwargs["id2label"]} if "id2label" in kwargs else {})}  # class names of a LoRA head
    info.update(model_path=str(loaded.path), source=source)
    return model.train(), loaded.tokenizer, info


def _check_save_targets(model, out: Path, config: FinetuneConfig) -> None:
    """Refuse, before any training, a ``best/`` or ``compressed/`` folder that holds another model."""
    if hasattr(model, "peft_config"):  # a LoRA best/ is a peft adapter folder
        return
    from ..io import check_save_target

    if config.compress_only:
        check_save_target(model, out / "compressed")
    elif config.save_best:
        check_save_target(model, out / "best")


def _check_resume_settings(saved: dict, config: FinetuneConfig, where: Path) -> None:
    current = config.to_dict()
    changed = {k: (saved.get(k), v) for k, v in current.items() if k not in RESUME_MAY_CHANGE and saved.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
        raise ValueError(f"--resume: the run in {where} was made with other settings ({detail}); resume with the "
                         f"same settings (only {', '.join(RESUME_MAY_CHANGE)} may change) or use another --out")


def _compress_only(model, tokenizer, info: dict, out: Path, accelerator) -> dict[str, Any]:
    """Save the compressed model to ``out/compressed`` (for ``init_from``) with a small report."""
    from ..io import save_pretrained

    report: dict[str, Any] = {"compressed_dir": str(out / "compressed"), "compress_seconds": info.get("compress_seconds"),
                              "total_params": count_parameters(model),
                              "trainable_params": count_parameters(model, trainable_only=True)}
    if accelerator.is_main_process:
        save_pretrained(model, out / "compressed", tokenizer=tokenizer)
        rep = info.get("report")
        if rep is not None:
            report["compression_table"] = rep.table()
            report["compression"] = rep.to_dict()
        atomic_write_text(out / "compress_report.json", json.dumps(report, indent=2, default=str))
    accelerator.print(f"compressed model saved to {out / 'compressed'} "
                      f"(#To {report['total_params']:,}, #Ft {report['trainable_params']:,}); "
                      f"fine-tune it with --init-from {out / 'compressed'}")
    return report
