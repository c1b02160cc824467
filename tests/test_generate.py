"""Generation: the model's forward with a key/value cache is the full forward, position by position, so are the
logits of the last positions (or of selected ones) alone, and the forward resumed after its first blocks, and greedy decoding with the cache gives the tokens that decoding without one
gives."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from tasks.model.generate import KVCache, generate
from tasks.model.llama4 import Llama4

pytestmark = pytest.mark.usefixtures("one_thread")

# Chunks of 8 and a temperature floor of 4 on sequences of 30: chunk boundaries and NoPE
# query scaling both fall inside the cached part. Layer 3 of 4 is NoPE; Scout-style has QK
# norm and MoE on every layer, Maverick-style neither QK norm nor MoE on every layer.
SHAPE = dict(n_layers=4, nope_every=4, n_experts=4, chunk_size=8, floor_scale=4)
STYLES = {"scout-style": dict(moe_every=1, use_qk_norm=True), "maverick-style": dict(moe_every=2, use_qk_norm=False)}


def small_model(style: str, seed: int = 0) -> Llama4:
    return tiny_model(97, seed, **SHAPE, **STYLES[style]).eval()


def full_forward(style: str, seed: int) -> tuple[Llama4, torch.Tensor, torch.Tensor]:
    """A small model, three rows of 30 random tokens drawn from ``seed``, and the logits of its full forward."""
    model = small_model(style)
    tokens = torch.randint(0, 97, (3, 30), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model, tokens, model(tokens).logits


@pytest.mark.parametrize("style", sorted(STYLES))
def test_cached_forward_gives_the_full_forwards_logits_at_every_position(style):
    model = small_model(style)
    assert model.layers[3].attention.use_rope is False and model.layers[0].attention.use_rope is True
    tokens = torch.randint(0, 97, (3, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens).logits
        cache = KVCache(model, 3, 32)
        parts = [model(tokens[:, :11], cache).logits, model(tokens[:, 11:19], cache).logits]  # prefill, then a block
        parts += [model(tokens[:, t : t + 1], cache).logits for t in range(19, 30)]  # then one position a step
    assert cache.length == 30
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_the_last_positions_logits_alone_are_the_full_forwards(style):
    model, tokens, full = full_forward(style, seed=3)
    with torch.no_grad():
        cache = KVCache(model, 3, 30)
        prefilled = model(tokens[:, :20], cache, last=1).logits
        rest = model(tokens[:, 20:], cache, last=4).logits
        alone = model(tokens, last=7).logits
        with pytest.raises(ValueError, match="last"):
            model(tokens, last=0)
    assert prefilled.shape == (3, 1, 97) and rest.shape == (3, 4, 97) and alone.shape == (3, 7, 97)
    torch.testing.assert_close(prefilled, full[:, 19:20], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rest, full[:, 26:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, full[:, 23:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_a_forward_resumed_from_the_hidden_state_of_its_first_blocks_is_the_full_forward(style):
    model, tokens, full = full_forward(style, seed=6)
    with torch.no_grad():
        for blocks in range(len(model.layers) + 1):
            resumed = model(tokens, last=5, resume=(blocks, model.hidden(tokens, blocks))).logits
            torch.testing.assert_close(resumed, full[:, -5:], atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="cache"):
            model(tokens, KVCache(model, 3, 30), resume=(1, model.hidden(tokens, 1)))


@pytest.mark.parametrize("style", sorted(STYLES))
def test_the_selected_positions_logits_alone_are_the_full_forwards(style):
    model, tokens, full = full_forward(style, seed=4)
    where = torch.rand(3, 30, generator=torch.Generator().manual_seed(5)) < 0.3
    where[1] = False  # a row with no position selected gives none
    with torch.no_grad():
        selected = model(tokens, where=where)
        with pytest.raises(ValueError, match="where"):
            model(tokens, where=where[:, 1:])
        with pytest.raises(ValueError, match="where"):
            model(tokens, where=where.long())
        with pytest.raises(ValueError, match="not both"):
            model(tokens, last=2, where=where)
    assert selected.logits.shape == (int(where.sum()), 97) and selected.where is where
    torch.testing.assert_close(selected.logits, full[where], atol=1e-5, rtol=1e-5)


def decode_without_cache(model: Llama4, prompt: list[int], max_new_tokens: int, stop_id: int) -> list[int]:
    """The most likely token each time, from a full forward over everything so far."""
    sequence, new = list(prompt), []
    with torch.no_grad():
        while len(new) < max_new_tokens and stop_id not in new:
            new.append(int(model(torch.tensor([sequence])).logits[0, -1].argmax()))
            sequence.append(new[-1])
    return new


@pytest.mark.parametrize("style", sorted(STYLES))
def test_greedy_generation_with_the_cache_equals_generation_without_it(style):
    model = small_model(style, seed=1)
    torch.manual_seed(2)
    prompts = [torch.randint(0, 97, (length,)).tolist() for length in (3, 12, 3, 21, 9, 12)]
    unstopped = [decode_without_cache(model, prompt, 14, stop_id=-1) for prompt in prompts]
    stop_id = next(t for row in unstopped for i, t in enumerate(row) if i >= 2 and t not in row[:i])
    expected = [decode_without_cache(model, prompt, 14, stop_id) for prompt in prompts]
    assert min(map(len, expected)) < 14  # a row ends at the stop token
    assert generate(model, prompts, 14, stop_id, batch_size=2) == expected
