"""The Hugging Face export: shards and their index, the selection bias beside them, transformers' view of both."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
import torch
from safetensors import safe_open

from herd.model import nano
from tasks.model import hf
from tasks.model.llama4 import Llama4

SHARD_BYTES = 200_000  # a tiny model in several shards


def tiny_biased_model() -> Llama4:
    """A tiny Scout-shaped model whose selection biases change which experts its tokens go to."""
    config = nano().model_copy(update={"vocab_size": 512, "dim": 64, "n_heads": 2, "n_kv_heads": 1, "head_dim": 32,
                                       "ffn_dim": 64, "dense_ffn_dim": 128, "chunk_size": 16, "floor_scale": 8})
    torch.manual_seed(0)
    model = Llama4(config)
    model.init_weights(std=0.05)
    with torch.no_grad():
        for block in model.layers:
            # as large as a long run with router_balance=bias makes them, against router logits of ~0.1
            block.moe.selection_bias.copy_(torch.randn(config.n_experts))
    return model.eval()


def routing(model: Llama4, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    with torch.no_grad():
        out = model(tokens)
    return out.logits, [stats.tokens_per_expert for stats in out.router]


def test_a_sharded_export_has_an_index_of_small_shards_and_routes_as_the_trained_model(tmp_path):
    model = tiny_biased_model()
    folder = hf.export(model, tmp_path / "hf", max_shard_bytes=SHARD_BYTES)

    index = json.loads((folder / hf.INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and not (folder / hf.WEIGHTS).exists()
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    sizes = {}
    for shard in shards:
        with safe_open(str(folder / shard), "pt") as f:
            assert sorted(f.keys()) == sorted(k for k, v in index["weight_map"].items() if v == shard)
            tensors = [f.get_tensor(k) for k in f.keys()]
        sizes[shard] = sum(t.numel() * t.element_size() for t in tensors)
        assert sizes[shard] <= SHARD_BYTES or len(tensors) == 1
    assert index["metadata"]["total_size"] == sum(sizes.values())
    assert "selection bias" in json.loads((folder / "config.json").read_text())["herd_warning"]

    tokens = torch.randint(0, 512, (2, 40))
    logits, counts = routing(model, tokens)
    reloaded = hf.load(folder)
    reloaded_logits, reloaded_counts = routing(reloaded, tokens)
    assert torch.equal(reloaded_logits, logits)
    assert all(torch.equal(a, b) for a, b in zip(reloaded_counts, counts))

    (folder / hf.SELECTION_BIAS).unlink()
    with pytest.raises(FileNotFoundError, match="allow_missing_selection_bias"):
        hf.load(folder)
    unbiased = hf.load(folder, allow_missing_selection_bias=True)
    _, unbiased_counts = routing(unbiased, tokens)
    assert any(not torch.equal(a, b) for a, b in zip(unbiased_counts, counts))  # the bias is what made the routing


def test_transformers_loads_the_shards_and_routes_without_the_bias(tmp_path):
    from transformers import Llama4ForCausalLM

    model = tiny_biased_model()
    folder = hf.export(model, tmp_path / "hf", max_shard_bytes=SHARD_BYTES)
    reference = Llama4ForCausalLM.from_pretrained(folder).eval()
    tokens = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        theirs = reference(tokens).logits
    unbiased = hf.load(folder)
    for block in unbiased.layers:  # as transformers routes: without the bias
        block.moe.selection_bias.zero_()
    torch.testing.assert_close(routing(unbiased, tokens)[0], theirs, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(routing(model, tokens)[0], theirs, atol=1e-2)


class ReadLog(Mapping):
    """A state dict read lazily, as from a checkpoint on disk, noting how many shards were on disk at each read."""

    def __init__(self, state: dict[str, torch.Tensor], folder) -> None:
        self.state, self.folder, self.shards_written_at_read = state, folder, {}

    def __getitem__(self, name: str) -> torch.Tensor:
        self.shards_written_at_read[name] = len(list(self.folder.glob(".shard-*.partial")))
        return self.state[name].clone()

    def __iter__(self):
        return iter(self.state)

    def __len__(self) -> int:
        return len(self.state)


def test_the_export_writes_each_shard_before_reading_the_next_ones_tensors(tmp_path):
    model = tiny_biased_model()
    folder = tmp_path / "hf"
    folder.mkdir()
    state = ReadLog(model.state_dict(), folder)
    hf.export_weights(state, model.config, folder, max_shard_bytes=SHARD_BYTES)

    weight_map = json.loads((folder / hf.INDEX).read_text())["weight_map"]
    reads = [(int(weight_map[hf.to_hf_name(name)][6:11]), written)
             for name, written in state.shards_written_at_read.items() if hf.to_hf_name(name)]
    # The tensor that does not fit is read while the full shard is still to be written; every later one after.
    expected = [shard - 2 if i and reads[i - 1][0] != shard else shard - 1 for i, (shard, _) in enumerate(reads)]
    assert [written for _, written in reads] == expected and reads[-1][0] >= 3
    assert not list(folder.glob(".shard-*"))  # every partial file renamed


def test_a_model_in_one_shard_is_one_file_and_a_bad_shard_size_is_refused(tmp_path):
    model = tiny_biased_model()
    folder = hf.export(model, tmp_path / "hf")
    assert (folder / hf.WEIGHTS).is_file() and not (folder / hf.INDEX).exists()
    assert (folder / hf.SELECTION_BIAS).is_file()
    hf.export(model, folder, max_shard_bytes=SHARD_BYTES)  # re-exported sharded: the single file goes
    assert not (folder / hf.WEIGHTS).exists() and (folder / hf.INDEX).is_file()
    with pytest.raises(ValueError, match="max_shard_bytes"):
        hf.export(model, tmp_path / "other", max_shard_bytes=0)
