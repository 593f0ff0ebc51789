"""Fine-tuning: the job end to end (tiny BERT with MiniLM's tokenizer), resume, method counts, and 2-process DDP on CPU."""

import json
import os
import socket

import pytest
import torch

from _plm_models import tiny_inputs
from mpokit.config import MPOConfig
from mpokit.finetuning import FinetuneConfig, finetune, load_for_task, lora_rank_for_budget
from mpokit.surgery import compress, count_parameters, mpo_modules
from mpokit.tasks import get_task
from mpokit.training import build_optimizer, train_steps

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random BERT saved like a hub model, with the real all-MiniLM-L6-v2 tokenizer (vocab 30522)."""
    import transformers as T

    from mpokit.recipes.models import default_model_path

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=30522, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=36, max_position_embeddings=64, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
    T.BertModel(cfg).save_pretrained(str(folder))
    T.AutoTokenizer.from_pretrained(str(default_model_path())).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def rt():
    from mpokit.data import load_data

    return load_data("rotten_tomatoes")


def build_model(method, model_path=None, *, data, seed=0, **options):
    """(model, tokenizer, info) as the job builds them: loaded for the classify task of ``data``, prepared for ``method``."""
    config = FinetuneConfig(method=method, model_path=model_path, data="rotten_tomatoes", seed=seed, **options)
    return load_for_task(config, get_task("classify"), data)


SMALL = dict(data="rotten_tomatoes", train_size=48, validation_size=24, test_size=24, batch_size=16, eval_batch_size=24, max_length=32,
             cpu=True, progress=False, num_threads=1)


def test_finetune_lfa_end_to_end_report_and_best_checkpoint(tiny_folder, tmp_path):
    from mpokit.io import from_pretrained

    report = finetune(method="mpo-lfa", model_path=tiny_folder, output_dir=str(tmp_path), epochs=1, lr=1e-3,
                      mpo_lr=1e-4, **SMALL)
    assert report["data"]["sizes"] == {"train": 48, "validation": 24, "test": 24}
    assert report["data"]["full_sizes"] == {"train": 10168, "validation": 1291, "test": 1293}
    assert 0.0 <= report["test_accuracy"] <= 1.0 and len(report["history"]) == 1
    assert set(report["test"]) >= {"loss", "accuracy", "macro_f1", "n"} and report["task"] == "classify"
    assert report["seconds_per_step"] > 0 and report["data"]["encoding"]["train"]["examples"] == 48
    assert report["trainable_params"] < report["total_params"]
    assert json.loads((tmp_path / "report.json").read_text())["test_accuracy"] == report["test_accuracy"]
    assert "| #To | #Ft |" in (tmp_path / "report.md").read_text()
    best = from_pretrained(tmp_path / "best")  # the saved best model is a loadable MPO checkpoint
    assert mpo_modules(best) and count_parameters(best) == report["total_params"]
    assert count_parameters(best, trainable_only=True) == report["trainable_params"]


def test_resume_continues_exactly(tiny_folder, tmp_path):
    opts = dict(method="mpo-lfa", model_path=tiny_folder, lr=1e-3, mpo_lr=1e-4, **SMALL)
    straight = finetune(output_dir=str(tmp_path / "a"), epochs=2, **opts)
    finetune(output_dir=str(tmp_path / "b"), epochs=2, stop_after_epochs=1, **opts)  # "interrupted" after epoch 1
    resumed = finetune(output_dir=str(tmp_path / "b"), epochs=2, resume=True, **opts)
    assert len(resumed["history"]) == 2
    assert resumed["history"][1]["train_loss"] == straight["history"][1]["train_loss"]  # bit for bit
    assert resumed["history"][1]["validation"] == straight["history"][1]["validation"]
    assert resumed["test"] == straight["test"]


def test_resume_with_epochs_cut_short_equals_the_unbroken_run(tiny_folder, tmp_path):
    """--max-steps-per-epoch: the shuffler state is saved and restored, not replayed."""
    opts = dict(method="mpo-lfa", model_path=tiny_folder, lr=1e-3, mpo_lr=1e-4, max_steps_per_epoch=2, **SMALL)
    straight = finetune(output_dir=str(tmp_path / "a"), epochs=3, **opts)
    finetune(output_dir=str(tmp_path / "b"), epochs=3, stop_after_epochs=1, **opts)
    finetune(output_dir=str(tmp_path / "b"), epochs=3, stop_after_epochs=1, resume=True, **opts)
    resumed = finetune(output_dir=str(tmp_path / "b"), epochs=3, resume=True, **opts)
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    assert resumed["test"] == straight["test"]


def test_resume_refuses_changed_settings(tiny_folder, tmp_path):
    opts = dict(method="bitfit", model_path=tiny_folder, output_dir=str(tmp_path), **SMALL)
    finetune(epochs=2, stop_after_epochs=1, lr=1e-3, **opts)
    for change in (dict(lr=2e-3), dict(seed=1), dict(batch_size=8), dict(train_size=40)):
        merged = {**opts, **change}
        with pytest.raises(ValueError, match="other settings") as err:
            finetune(epochs=2, resume=True, **{"lr": 1e-3, **merged})
        assert next(iter(change)) in str(err.value)
    finetune(epochs=3, resume=True, lr=1e-3, **opts)  # more epochs is allowed


def test_method_trainable_counts(tiny_folder, rt):
    full, _, _ = build_model("full", tiny_folder, data=rt)
    assert count_parameters(full, trainable_only=True) == count_parameters(full)
    bitfit, _, _ = build_model("bitfit", tiny_folder, data=rt)
    expected = sum(p.numel() for n, p in bitfit.named_parameters()
                   if n.endswith(".bias") or "LayerNorm" in n or n.startswith("classifier."))
    assert count_parameters(bitfit, trainable_only=True) == expected
    rank = lora_rank_for_budget(full, 5000)
    lora, _, info = build_model("lora", tiny_folder, data=rt, lora_rank=rank)
    per_rank = 2 * (4 * (24 + 24) + 2 * (24 + 36)) + (24 + 24)  # 2 layers x (Q,K,V,O + FFN in/out) + pooler
    assert info["lora_targets"] == 2 * 6 + 1
    assert count_parameters(lora, trainable_only=True) == rank * per_rank + 24 * 2 + 2


def test_train_steps_and_evaluate_on_a_compressed_model(tiny_folder, rt):
    model, tok, _ = build_model("mpo-lfa", tiny_folder, data=rt)
    batch = tok(["great fun", "a dull mess", "moving", "tedious"], padding=True, return_tensors="pt")
    batch = dict(batch, labels=torch.tensor([1, 0, 1, 0]))
    evaluate = get_task("classify").evaluate
    before = evaluate(model, [batch])
    opt = build_optimizer(model, lr=1e-2, mpo_lr=1e-3)
    out = train_steps(model, [batch] * 5, opt)
    after = evaluate(model, [batch])
    assert out["steps"] == 5 and after["n"] == 4
    assert after["loss"] < before["loss"], (before, after)


def test_compress_once_then_init_from_equals_compressing_in_process(tiny_folder, tmp_path, rt):
    """--compress-only + --init-from: the same cores, trainable flags and (seeded) head as compressing in process."""
    report = finetune(method="mpo-lfa", model_path=tiny_folder, output_dir=str(tmp_path), compress_only=True, **SMALL)
    folder = report["compressed_dir"]
    assert (tmp_path / "compressed" / "mpo_config.json").is_file() and not (tmp_path / "report.json").exists()
    for seed in (0, 3):
        direct, _, _ = build_model("mpo-lfa", tiny_folder, data=rt, seed=seed)
        loaded, tok, info = build_model("mpo-lfa", data=rt, seed=seed, init_from=folder)
        assert info["model_path"] == folder and tok.vocab_size == 30522 and loaded.training
        a, b = dict(direct.named_parameters()), dict(loaded.named_parameters())
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name
            assert a[name].requires_grad == b[name].requires_grad, name
        assert all(m.recompute for _, m in mpo_modules(loaded))
    dense, _, _ = build_model("full", tiny_folder, data=rt, seed=3)  # every method draws the same head for a seed
    assert torch.equal(dense.classifier.weight, loaded.classifier.weight)
    run = finetune(method="mpo-lfa", init_from=folder, output_dir=str(tmp_path / "run"), lr=1e-3, mpo_lr=1e-4, **SMALL)
    assert run["trainable_params"] == report["trainable_params"] and run["config"]["init_from"] == folder


def test_init_from_rejects_bad_combinations(tiny_folder, tmp_path, rt):
    with pytest.raises(ValueError, match="init_from applies to method='mpo-lfa' only"):
        FinetuneConfig(method="full", init_from=str(tmp_path))
    with pytest.raises(ValueError, match="drop param_ratio"):
        FinetuneConfig(method="mpo-lfa", init_from=str(tmp_path), param_ratio=0.5)
    with pytest.raises(ValueError, match="holds no MPO model"):
        build_model("mpo-lfa", data=rt, init_from=tiny_folder)  # a plain transformers folder


def test_cli_finetune_runs(tiny_folder, tmp_path):
    from mpokit.cli import main

    rc = main(["finetune", "--method", "bitfit", "--model", tiny_folder, "--out", str(tmp_path), "--train-size", "32",
               "--validation-size", "16", "--test-size", "16", "--batch-size", "16", "--lr", "1e-3", "--cpu",
               "--threads", "1", "--no-progress", "--no-checkpoints"])
    assert rc == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"] == "bitfit" and not (tmp_path / "best").exists()


# ---------------------------------------------------------------------------
# two-process data parallel training on CPU (gloo), through Accelerate
# ---------------------------------------------------------------------------

GLOBAL_BATCH, STEPS = 8, 3


def _ddp_model_and_batches():
    from _plm_models import tiny_model

    model = tiny_model("bert", seed=3).train()
    compress(model, MPOConfig())  # full-rank MPO + LFA (aux cores + non-MPO params train)
    g = torch.Generator().manual_seed(5)
    batches = []
    for _ in range(STEPS):
        inputs = tiny_inputs(seed=int(torch.randint(0, 10_000, (1,), generator=g)), batch=GLOBAL_BATCH)
        batches.append(dict(inputs, labels=torch.randint(0, 2, (GLOBAL_BATCH,), generator=g)))
    return model, batches


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from safetensors.torch import save_file

    # a forked child inherits the parent's (single-process) Accelerate singletons: start from a clean state
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    acc = Accelerator(cpu=True)
    assert acc.num_processes == world, acc.state
    model, batches = _ddp_model_and_batches()
    opt = build_optimizer(model, lr=1e-2, mpo_lr=1e-3)
    model, opt = acc.prepare(model, opt)
    per = GLOBAL_BATCH // world
    shards = [{k: v[rank * per:(rank + 1) * per] for k, v in b.items()} for b in batches]
    train_steps(model, shards, opt, accelerator=acc, max_grad_norm=1.0)
    state = {k: v.detach().contiguous() for k, v in acc.unwrap_model(model).state_dict().items()}
    save_file(state, os.path.join(out_dir, f"rank{rank}.safetensors"))
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_cpu_data_parallel_matches_single_process(tmp_path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    world = 2
    # fork: the workers inherit the imported modules (spawn would re-import transformers in each)
    mp.start_processes(_ddp_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True,
                       start_method="fork")
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(world))
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{k} differs across ranks"

    model, batches = _ddp_model_and_batches()  # single process, same global batches
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_steps(model, batches, build_optimizer(model, lr=1e-2, mpo_lr=1e-3), max_grad_norm=1.0)
    single = model.state_dict()
    moved = 0
    for k in r0:
        diff = (r0[k] - single[k]).abs().max().item()
        assert diff <= 1e-5, f"{k}: DDP vs single process differ by {diff:.3e}"
        moved += not torch.equal(single[k], start[k])
    assert moved > 0


@pytest.mark.slow
def test_real_minilm_lfa_short_run(tmp_path):
    from mpokit.recipes.models import named_model_path

    report = finetune(method="mpo-lfa", model_path=named_model_path("all-MiniLM-L6-v2"), data="rotten_tomatoes",
                      output_dir=str(tmp_path), epochs=1, train_size=256, validation_size=128,
                      test_size=256, lr=5e-4, mpo_lr=1e-4, cpu=True, progress=False)
    assert report["trainable_params"] < 0.15 * 22_713_986
    assert report["test_accuracy"] > 0.55


def test_reinit_head_redraws_a_classifier_and_leaves_a_tied_lm_head_alone():
    import transformers as T

    from mpokit.finetuning import reinit_head

    torch.manual_seed(0)
    cls = T.BertForSequenceClassification(T.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=32, num_labels=2))
    before = cls.classifier.weight.detach().clone()
    assert reinit_head(cls, seed=5) == ["classifier"] and not torch.equal(before, cls.classifier.weight)
    again = cls.classifier.weight.detach().clone()
    reinit_head(cls, seed=5)
    assert torch.equal(again, cls.classifier.weight)  # a function of the seed only
    lm = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    wte = lm.transformer.wte.weight.detach().clone()
    assert reinit_head(lm, seed=5) == [] and torch.equal(wte, lm.transformer.wte.weight)
