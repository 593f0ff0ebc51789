"""The whole fine-tuning job on HF Accelerate: build, train with evaluation each epoch, keep the best, resume,
test, report (JSON + markdown)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..surgery import count_parameters
from .loaders import load_rotten_tomatoes_for
from ..training import (PeakMemory, build_optimizer, linear_warmup_decay, load_training_state, save_training_state,
                        set_seed, train_steps)
from .loop import evaluate
from .models import build_model
from .report import build_report, markdown
from .settings import FinetuneConfig
from .state import load_best, save_model

__all__ = ["finetune"]


def finetune(config: FinetuneConfig | None = None, **overrides) -> dict[str, Any]:
    """Run one fine-tuning job; returns the report dict (also written to ``output_dir/report.{json,md}``).

    Same code on CPU, one GPU or several processes (``accelerate launch``).
    Each epoch: train, evaluate on validation, keep the best model (by
    validation accuracy) in ``output_dir/best``, and a resume checkpoint in
    ``output_dir/last``. At the end the best model is evaluated on test.
    """
    from accelerate import Accelerator

    config = FinetuneConfig(**overrides) if config is None else (
        FinetuneConfig(**{**asdict(config), **overrides}) if overrides else config)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    accelerator = Accelerator(cpu=config.cpu)
    set_seed(config.seed)
    out = Path(config.output_dir)
    model, tokenizer, info = build_model(config.method, config.model_path, seed=config.seed,
                                         param_ratio=config.param_ratio, max_bond=config.max_bond,
                                         lora_rank=config.lora_rank, init_from=config.init_from)
    if config.compress_only:
        return _compress_only(model, tokenizer, info, out, accelerator)
    data = load_rotten_tomatoes_for(
        tokenizer, max_length=config.max_length, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
        train_size=config.train_size, validation_size=config.validation_size, test_size=config.test_size,
        split_seed=config.split_seed, subset_seed=config.split_seed, shuffle_seed=config.seed,
    )
    total_params = count_parameters(model)
    trainable_params = count_parameters(model, trainable_only=True)
    optimizer = build_optimizer(model, config.lr, config.mpo_lr, config.weight_decay)
    steps_per_epoch = math.ceil(len(data["train"]) / max(accelerator.num_processes, 1))
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    total_steps = steps_per_epoch * config.epochs
    scheduler = linear_warmup_decay(optimizer, total_steps, int(config.warmup_ratio * total_steps))
    resume_dir = out / "last"
    resuming = config.resume and (resume_dir / "trainer_state.json").is_file()
    model, optimizer, train_dl, val_dl, test_dl, scheduler = accelerator.prepare(
        model, optimizer, data["train"], data["validation"], data["test"], scheduler)

    history: list[dict] = []
    start_epoch, best = 0, {"accuracy": -1.0, "epoch": None}
    if resuming:
        state = load_training_state(resume_dir, accelerator.unwrap_model(model), optimizer=optimizer,
                                    scheduler=scheduler, generators={"shuffle": data["shuffle_generator"]})
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
        accelerator.print(f"resumed from {out / 'last'} after epoch {state['epoch'] + 1}")

    subset_note = (f"subset: train {data['sizes']['train']} of {data['full_sizes']['train']} sentences, "
                   f"max_length {config.max_length}, {config.epochs} epoch(s)")
    if "report" in info and config.progress:
        accelerator.print(f"compressed in {info['compress_seconds']:.1f}s:\n{info['report'].table()}")
    accelerator.print(f"[{config.method}] #To {total_params:,}  #Ft {trainable_params:,}  ({subset_note})")
    wall0 = time.perf_counter()
    end_epoch = config.epochs if config.stop_after_epochs is None else min(config.epochs, start_epoch + config.stop_after_epochs)
    for epoch in range(start_epoch, end_epoch):
        if hasattr(train_dl, "set_epoch"):
            train_dl.set_epoch(epoch)
        t0 = time.perf_counter()
        with PeakMemory() as mem:
            tr = train_steps(model, train_dl, optimizer, accelerator=accelerator, scheduler=scheduler,
                             max_grad_norm=config.max_grad_norm, max_steps=config.max_steps_per_epoch,
                             progress=f"epoch {epoch + 1}/{config.epochs}" if config.progress else False)
        train_seconds = time.perf_counter() - t0
        val = evaluate(model, val_dl, accelerator, progress="validation" if config.progress else False)
        row = {"epoch": epoch + 1, "train_loss": tr["loss"], "steps": tr["steps"], "train_seconds": train_seconds,
               "peak_rss_mib": mem.peak_mib, "rss_before_mib": mem.start_mib, "cuda_peak_mib": mem.cuda_peak_mib,
               "val_loss": val["loss"], "val_accuracy": val["accuracy"]}
        history.append(row)
        accelerator.print(f"epoch {epoch + 1}: train loss {tr['loss']:.4f}  val acc {val['accuracy']:.4f}  "
                          f"{train_seconds:.1f}s  peak RSS {mem.peak_mib:.0f} MiB")
        if val["accuracy"] > best["accuracy"]:
            best = {"accuracy": val["accuracy"], "epoch": epoch + 1}
            if config.save_best and accelerator.is_main_process:
                save_model(accelerator.unwrap_model(model), out / "best", tokenizer)
        accelerator.wait_for_everyone()
        if config.save_last and accelerator.is_main_process:
            save_training_state(out / "last", accelerator.unwrap_model(model), optimizer=optimizer, scheduler=scheduler,
                                generators={"shuffle": data["shuffle_generator"]},
                                state={"epoch": epoch, "best": best, "history": history, "config": asdict(config)})
        accelerator.wait_for_everyone()

    if config.save_best and (out / "best").exists() and best["epoch"] is not None:
        load_best(accelerator.unwrap_model(model), out / "best")
    test = evaluate(model, test_dl, accelerator, progress="test" if config.progress else False)
    report = build_report(config, data, info, history, best, test, accelerator,
                          total_params=total_params, trainable_params=trainable_params,
                          wall_seconds=time.perf_counter() - wall0, subset_note=subset_note)
    if accelerator.is_main_process:
        from ..io import atomic_write_text

        atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str))
        atomic_write_text(out / "report.md", markdown(report))
        if config.progress:
            accelerator.print("\n" + markdown(report))
    accelerator.print(f"[{config.method}] test accuracy {test['accuracy']:.4f} (best epoch {best['epoch']}); "
                      f"report: {out / 'report.md'}")
    return report


def _compress_only(model, tokenizer, info: dict, out: Path, accelerator) -> dict[str, Any]:
    """Save the compressed model to ``out/compressed`` (for ``init_from``) with a small report."""
    from ..io import atomic_write_text, save_pretrained

    report: dict[str, Any] = {"compressed_dir": str(out / "compressed"), "compress_seconds": info.get("compress_seconds"),
                              "total_params": count_parameters(model),
                              "trainable_params": count_parameters(model, trainable_only=True)}
    if accelerator.is_main_process:
        save_pretrained(model, out / "compressed", tokenizer=tokenizer)
        rep = info.get("report")
        if rep is not None:
            report["compression_table"] = rep.table()
        atomic_write_text(out / "compress_report.json", json.dumps(report, indent=2, default=str))
    accelerator.print(f"compressed model saved to {out / 'compressed'} "
                      f"(#To {report['total_params']:,}, #Ft {report['trainable_params']:,}); "
                      f"fine-tune it with --init-from {out / 'compressed'}")
    return report
