"""Tokenised Rotten Tomatoes loaders (the movie-disjoint split of :mod:`mpokit.data.rotten_tomatoes`)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["load_rotten_tomatoes_for"]


class _Encoded(torch.utils.data.Dataset):
    def __init__(self, input_ids: list[list[int]], labels: list[int]):
        self.input_ids, self.labels = input_ids, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.input_ids[i], self.labels[i]


def _collate(pad_id: int):
    def collate(items):
        longest = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), longest), pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, (ids, _) in enumerate(items):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        labels = torch.tensor([y for _, y in items], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    return collate


def load_rotten_tomatoes_for(
    tokenizer,
    *,
    max_length: int = 64,
    batch_size: int = 32,
    eval_batch_size: int | None = None,
    train_size: int | None = None,
    validation_size: int | None = None,
    test_size: int | None = None,
    split_seed: int = 0,
    subset_seed: int = 0,
    shuffle_seed: int = 0,
) -> dict[str, Any]:
    """Tokenised loaders ``{"train", "validation", "test"}`` plus ``"sizes"`` (after subsetting) and ``"full_sizes"``.

    The split is by movie (:func:`mpokit.data.load_rotten_tomatoes` with
    ``split_seed``); ``*_size`` take random subsets (``subset_seed``); the
    train loader shuffles with a generator seeded by ``shuffle_seed``.
    Sequences are truncated to ``max_length`` tokens and padded per batch.
    """
    from ..data import load_rotten_tomatoes

    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}; e.g. max_length=64")
    data = load_rotten_tomatoes(seed=split_seed)
    wanted = {"train": train_size, "validation": validation_size, "test": test_size}
    loaders: dict[str, Any] = {"full_sizes": data.sizes(), "sizes": {}}
    for split, size in wanted.items():
        part = data.split(split)
        if size is not None:
            part = part.subsample(size, seed=subset_seed)
        enc = tokenizer(list(part.texts), truncation=True, max_length=max_length)["input_ids"]
        dataset = _Encoded(enc, list(part.labels))
        gen = torch.Generator().manual_seed(shuffle_seed) if split == "train" else None
        loaders[split] = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size if split == "train" else (eval_batch_size or batch_size),
            shuffle=split == "train",
            generator=gen,
            collate_fn=_collate(tokenizer.pad_token_id or 0),
        )
        loaders["sizes"][split] = len(dataset)
        if gen is not None:
            loaders["shuffle_generator"] = gen
    return loaders
