"""A pruned model (``MPOConfig(method="magnitude" | "2:4" | "wanda")``) saves with its masks and loads with them,
so its zeros stay zero through fine-tuning of the loaded checkpoint."""

import pytest
import torch

import mpokit
from mpokit.config import MPOConfig
from mpokit.io import CheckpointError, apply_pruning, pruned_modules

transformers = pytest.importorskip("transformers")


def _tiny_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, num_labels=2)
    return transformers.BertForSequenceClassification(cfg).eval()


def _batches():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 100, (4, 12), generator=g),
             "attention_mask": torch.ones(4, 12, dtype=torch.long)} for _ in range(3)]


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_pruned_checkpoint_round_trip_keeps_masks_through_training(tmp_path, method):
    model = _tiny_bert()
    batches = _batches()
    mpokit.compress(model, MPOConfig(method=method, budget=0.5, embedding=None), calibration=batches)
    names = pruned_modules(model)
    assert names, "the pruning methods keep a mask on every targeted matrix"
    reference = model(**batches[0]).logits
    mpokit.save_pretrained(model, tmp_path)
    loaded = mpokit.from_pretrained(tmp_path)
    assert pruned_modules(loaded) == names
    assert torch.equal(loaded(**batches[0]).logits, reference)
    for name in names:
        assert torch.equal(loaded.get_submodule(name).weight_mask, model.get_submodule(name).weight_mask)

    loaded.train()
    params = [p for p in loaded.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=0.5)
    loaded(**batches[1]).logits.square().sum().backward()
    opt.step()
    loaded(**batches[1])  # the prune hook recomputes weight = weight_orig * weight_mask
    for name in names:
        module = loaded.get_submodule(name)
        pruned = module.weight_mask == 0
        assert pruned.any()
        assert torch.all(module.weight[pruned] == 0), f"{name}: a pruned entry came back after a training step"
        assert not torch.equal(module.weight[~pruned], model.get_submodule(name).weight[~pruned])  # it did train


def test_a_pruned_name_the_model_lacks_is_a_clear_error():
    with pytest.raises(CheckpointError, match="no such module"):
        apply_pruning(_tiny_bert(), ["bert.encoder.layer.7.output.dense"])
