"""Hugging Face format: ``config.json`` + safetensors shards that ``transformers.Llama4ForCausalLM`` loads.

    folder = export(model, Path("out/hf"))   # shards of at most 5 GB, written one at a time
    model = load(folder)                     # herd's Llama 4, selection bias included

Our parameter names and transformers' differ only in spelling: both rotate interleaved
RoPE pairs and store experts as ``gate_up [E, D, 2F]`` and ``down [E, F, D]``, so the
conversion renames and never permutes.

The weights go out as transformers writes them: one ``model.safetensors`` when they fit in
one shard, else ``model-0000i-of-0000N.safetensors`` and ``model.safetensors.index.json``
(which file holds which tensor). :func:`export_weights` converts and writes tensor by tensor,
so beside the state it reads it holds one shard at most: a Scout export never builds a
second copy of the model.

The aux-loss-free selection bias has no place in transformers' router: it travels in
``selection_bias.safetensors`` beside the shards, which :func:`load` applies and stock
transformers ignores (so transformers routes a model trained with a bias differently; its
``config.json`` then carries a ``herd_warning``). :func:`load` refuses a MoE export without
that file unless told ``allow_missing_selection_bias=True``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from herd.model import ModelConfig, RopeScaling
from tasks.model.llama4 import Llama4

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
SELECTION_BIAS = "selection_bias.safetensors"
MAX_SHARD_BYTES = 5 * 1000**3  # transformers' default shard size
_SHARD = "model-{:05d}-of-{:05d}.safetensors"

_LAYER_RENAMES = [
    ("attention_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attention.wq.weight", "self_attn.q_proj.weight"),
    ("attention.wk.weight", "self_attn.k_proj.weight"),
    ("attention.wv.weight", "self_attn.v_proj.weight"),
    ("attention.wo.weight", "self_attn.o_proj.weight"),
    ("feed_forward.w1.weight", "feed_forward.gate_proj.weight"),
    ("feed_forward.w3.weight", "feed_forward.up_proj.weight"),
    ("feed_forward.w2.weight", "feed_forward.down_proj.weight"),
    ("moe.router.weight", "feed_forward.router.weight"),
    ("moe.experts.gate_up", "feed_forward.experts.gate_up_proj"),
    ("moe.experts.down", "feed_forward.experts.down_proj"),
    ("moe.shared.w1.weight", "feed_forward.shared_expert.gate_proj.weight"),
    ("moe.shared.w3.weight", "feed_forward.shared_expert.up_proj.weight"),
    ("moe.shared.w2.weight", "feed_forward.shared_expert.down_proj.weight"),
]
_TOP_RENAMES = [
    ("tok_embeddings.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
]
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


_TO_HF_TOP, _TO_HF_LAYER = dict(_TOP_RENAMES), dict(_LAYER_RENAMES)
_FROM_HF_TOP = {theirs: ours for ours, theirs in _TOP_RENAMES}
_FROM_HF_LAYER = {theirs: ours for ours, theirs in _LAYER_RENAMES}


def to_hf_name(name: str) -> str | None:
    """None for state that transformers has no place for (the selection bias, which goes to its own file)."""
    if name in _TO_HF_TOP:
        return _TO_HF_TOP[name]
    match = _LAYER.match(name)
    if match and match.group(2) in _TO_HF_LAYER:
        return f"model.layers.{match.group(1)}.{_TO_HF_LAYER[match.group(2)]}"
    if name.endswith("selection_bias"):
        return None
    raise KeyError(f"no Hugging Face name for parameter {name!r}")


def from_hf_name(name: str) -> str:
    if name in _FROM_HF_TOP:
        return _FROM_HF_TOP[name]
    match = _HF_LAYER.match(name)
    if match and match.group(2) in _FROM_HF_LAYER:
        return f"layers.{match.group(1)}.{_FROM_HF_LAYER[match.group(2)]}"
    raise KeyError(f"unexpected tensor {name!r} in a Llama 4 text checkpoint")


def hf_config(config: ModelConfig, bos_id: int | None = None, eos_id: int | None = None,
              pad_id: int | None = None) -> dict:
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        rope = {"rope_type": "llama3", "rope_theta": config.rope_theta, **config.rope_scaling.model_dump()}
    return {
        "architectures": ["Llama4ForCausalLM"],
        "model_type": "llama4_text",
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim,
        "intermediate_size_mlp": config.dense_ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "num_local_experts": config.n_experts,
        "num_experts_per_tok": config.top_k,
        "interleave_moe_layer_step": config.moe_every,
        "moe_layers": [i for i in range(config.n_layers) if config.is_moe(i)],
        "no_rope_layers": [0 if config.is_nope(i) else 1 for i in range(config.n_layers)],
        "use_qk_norm": config.use_qk_norm,
        "attention_chunk_size": config.chunk_size,
        "attn_temperature_tuning": config.temperature_tuning,
        "attn_scale": config.attn_scale,
        "floor_scale": config.floor_scale,
        "rope_parameters": rope,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
        "herd_model_config": config.model_dump(mode="json"),
    }


def export(model: Llama4, folder: Path, bos_id: int | None = None, eos_id: int | None = None,
           pad_id: int | None = None, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    return export_weights(model.state_dict(), model.config, folder, bos_id, eos_id, pad_id, max_shard_bytes)


def export_weights(state: Mapping[str, torch.Tensor], config: ModelConfig, folder: Path, bos_id: int | None = None,
                   eos_id: int | None = None, pad_id: int | None = None,
                   max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write ``state`` (our names) as a Hugging Face folder, reading each tensor once and converting it as it goes.

    ``state`` may read its tensors lazily (a mapping over ``safe_open`` of a checkpoint):
    nothing is held beyond the shard being filled and the tensor just read. A tensor larger
    than ``max_shard_bytes`` gets a shard of its own.
    """
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (*folder.glob("model*.safetensors"), *folder.glob(".shard-*.partial"), folder / INDEX,
                  folder / SELECTION_BIAS):
        stale.unlink(missing_ok=True)
    biases: dict[str, torch.Tensor] = {}
    written: list[tuple[Path, list[str], int]] = []  # (file, hf names, bytes) per shard
    shard: dict[str, torch.Tensor] = {}
    shard_bytes = 0
    for name in state:
        hf_name = to_hf_name(name)
        tensor = state[name].detach().contiguous().cpu()
        if hf_name is None:
            biases[name] = tensor
            continue
        size = tensor.numel() * tensor.element_size()
        if shard and shard_bytes + size > max_shard_bytes:
            written.append(_write_shard(shard, folder, len(written), shard_bytes))
            shard, shard_bytes = {}, 0
        shard[hf_name], shard_bytes = tensor, shard_bytes + size
    if shard:
        written.append(_write_shard(shard, folder, len(written), shard_bytes))
    _name_shards(folder, written)
    if biases:
        save_file(biases, str(folder / SELECTION_BIAS), metadata={"format": "pt"})
    written_config = hf_config(config, bos_id, eos_id, pad_id)
    if any(bool(bias.abs().sum() > 0) for bias in biases.values()):
        written_config["herd_warning"] = (
            f"trained with an aux-loss-free selection bias ({SELECTION_BIAS}) that transformers' router ignores: "
            "transformers routes tokens differently from the trained model; tasks.model.hf.load applies it")
    (folder / "config.json").write_text(json.dumps(written_config, indent=2) + "\n")
    return folder


def _write_shard(shard: dict[str, torch.Tensor], folder: Path, number: int, size: int) -> tuple[Path, list[str], int]:
    path = folder / f".shard-{number + 1:05d}.partial"
    save_file(shard, str(path), metadata={"format": "pt"})
    return path, list(shard), size


def _name_shards(folder: Path, written: list[tuple[Path, list[str], int]]) -> None:
    """Transformers' names, known once the number of shards is: one file, or numbered files and their index."""
    if len(written) == 1:
        os.replace(written[0][0], folder / WEIGHTS)
        return
    weight_map = {}
    for number, (partial, names, _) in enumerate(written):
        final = _SHARD.format(number + 1, len(written))
        os.replace(partial, folder / final)
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {"total_size": sum(size for *_, size in written)}, "weight_map": weight_map}
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def load(folder: Path, allow_missing_selection_bias: bool = False) -> Llama4:
    """Our model from an exported folder (ours or any Llama 4 text checkpoint with the same layout).

    A MoE model routes with the selection bias of ``selection_bias.safetensors``; without
    that file it is refused, unless ``allow_missing_selection_bias`` (then the bias is zero,
    which is how transformers routes).
    """
    raw = json.loads((folder / "config.json").read_text())
    if "herd_model_config" in raw:
        config = ModelConfig.model_validate(raw["herd_model_config"])
    else:
        config = _from_hf_config(raw)
    with torch.device("meta"):
        model = Llama4(config)
    state = {from_hf_name(name): tensor for name, tensor in _read_weights(folder)}
    buffers = {name: buffer for name, buffer in model.named_buffers()}
    if buffers and (folder / SELECTION_BIAS).is_file():
        biases = load_file(str(folder / SELECTION_BIAS))
        if set(biases) != set(buffers):
            raise ValueError(f"{folder / SELECTION_BIAS} holds {sorted(biases)}, the model has {sorted(buffers)}")
        state.update(biases)
    elif buffers and not allow_missing_selection_bias:
        raise FileNotFoundError(f"{folder} has no {SELECTION_BIAS}: without it the MoE layers would route as "
                                "if never trained with a selection bias; pass allow_missing_selection_bias=True "
                                "to load it that way (as transformers does)")
    for name, buffer in buffers.items():
        state.setdefault(name, torch.zeros_like(buffer, device="cpu"))
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _read_weights(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the checkpoint, shard by shard: the index's files, or the single ``model.safetensors``."""
    if (folder / INDEX).is_file():
        weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (folder / WEIGHTS).is_file():
        files = [WEIGHTS]
    else:
        raise FileNotFoundError(f"{folder} holds neither {WEIGHTS} nor {INDEX}")
    for file in files:
        yield from load_file(str(folder / file)).items()


def _from_hf_config(raw: dict) -> ModelConfig:
    rope = raw.get("rope_parameters") or {"rope_theta": raw.get("rope_theta", 500_000.0)}
    scaling = None
    if rope.get("rope_type") == "llama3":
        scaling = RopeScaling(**{k: rope[k] for k in RopeScaling.model_fields if k in rope})
    nope = raw.get("no_rope_layers") or []
    nope_every = next((i + 1 for i, uses_rope in enumerate(nope) if not uses_rope), 4)
    return ModelConfig(
        vocab_size=raw["vocab_size"], dim=raw["hidden_size"], n_layers=raw["num_hidden_layers"],
        n_heads=raw["num_attention_heads"], n_kv_heads=raw["num_key_value_heads"], head_dim=raw["head_dim"],
        ffn_dim=raw["intermediate_size"], dense_ffn_dim=raw["intermediate_size_mlp"],
        n_experts=raw["num_local_experts"], top_k=raw["num_experts_per_tok"],
        moe_every=raw.get("interleave_moe_layer_step", 1), nope_every=nope_every,
        chunk_size=raw.get("attention_chunk_size") or raw["max_position_embeddings"],
        use_qk_norm=raw["use_qk_norm"], rope_theta=rope["rope_theta"], rope_scaling=scaling,
        temperature_tuning=raw.get("attn_temperature_tuning", True), attn_scale=raw.get("attn_scale", 0.1),
        floor_scale=raw.get("floor_scale", 8192), norm_eps=raw["rms_norm_eps"],
        max_seq_len=raw["max_position_embeddings"],
    )
