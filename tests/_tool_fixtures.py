"""Tiny models and user data files for the command-line tests (tests/test_cli_tool.py).

Models: a random BERT (hidden 24, 2 layers), Llama and GPT-2 of the same size, each saved like a Hub model
beside the real all-MiniLM-L6-v2 tokenizer (vocab 30522); the Llama's copy of that BERT tokenizer gets
``[SEP]`` as its eos token, so documents are separated in the lm blocks; GPT-2's copy has no eos token. Data: text,label files written
the way a user would (CSV with string labels, floats for regression, one document per line for lm).
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLASSES = ("pos", "neg", "neutral")
WORDS = ("good bad fine awful great dull film plot actor scene story music pace cast ending").split()


@dataclass
class TinyModels:
    bert: str
    llama: str
    gpt2: str
    tokenizer: object


def make_models(folder: Path) -> TinyModels:
    import torch
    import transformers as T

    from mpokit.recipes.models import default_model_path

    tokenizer = T.AutoTokenizer.from_pretrained(str(default_model_path()))
    torch.manual_seed(0)
    bert_cfg = T.BertConfig(vocab_size=30522, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=36, max_position_embeddings=128, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
    bert = folder / "tiny-bert"
    T.BertModel(bert_cfg).save_pretrained(str(bert))
    tokenizer.save_pretrained(str(bert))

    lm_tokenizer = T.AutoTokenizer.from_pretrained(str(default_model_path()), eos_token="[SEP]")
    llama_cfg = T.LlamaConfig(vocab_size=30522, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, intermediate_size=36, max_position_embeddings=128,
                              pad_token_id=lm_tokenizer.pad_token_id, eos_token_id=lm_tokenizer.eos_token_id,
                              bos_token_id=lm_tokenizer.cls_token_id)
    llama = folder / "tiny-llama"
    T.LlamaForCausalLM(llama_cfg).save_pretrained(str(llama))
    lm_tokenizer.save_pretrained(str(llama))
    gpt2 = folder / "tiny-gpt2"  # Conv1D layers, and a tokenizer without an eos token (pad [PAD] only)
    T.GPT2LMHeadModel(T.GPT2Config(vocab_size=30522, n_embd=24, n_layer=2, n_head=2, n_positions=128)).save_pretrained(
        str(gpt2))
    tokenizer.save_pretrained(str(gpt2))
    return TinyModels(bert=str(bert), llama=str(llama), gpt2=str(gpt2), tokenizer=tokenizer)


def sentence(rng: random.Random, low: int = 3, high: int = 9) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def labelled_rows(n: int, seed: int, classes=CLASSES) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(sentence(rng), classes[i % len(classes)]) for i in range(n)]


def write_csv(path: Path, rows, header=("text", "label"), delimiter: str = ",") -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@dataclass
class DataFiles:
    train: str  # 30 rows, 3 string classes
    test: str  # 9 rows, same classes
    rows: list
    reg_train: str  # 24 rows, float labels
    reg_test: str
    lm_train: str  # 40 documents, one per line
    lm_test: str


def make_data(folder: Path) -> DataFiles:
    rows = labelled_rows(30, seed=1)
    rng = random.Random(2)
    reg = [(sentence(rng), round(rng.uniform(0, 5), 3)) for _ in range(24)]
    reg_test = [(sentence(rng), round(rng.uniform(0, 5), 3)) for _ in range(8)]
    return DataFiles(
        train=write_csv(folder / "train.csv", rows), test=write_csv(folder / "test.csv", labelled_rows(9, seed=3)),
        rows=rows, reg_train=write_csv(folder / "reg_train.csv", reg), reg_test=write_csv(folder / "reg_test.csv", reg_test),
        lm_train=write_lines(folder / "lm_train.txt", [sentence(rng, 8, 14) for _ in range(40)]),
        lm_test=write_lines(folder / "lm_test.txt", [sentence(rng, 4, 10) for _ in range(8)]))
