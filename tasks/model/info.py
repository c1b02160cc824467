"""``herd model info PRESET``: parameter counts computed on the meta device (no memory, no weights)."""

from __future__ import annotations

import torch

from herd.model import ModelConfig
from tasks.model.llama4 import Llama4


def model_info(config: ModelConfig) -> dict:
    with torch.device("meta"):
        model = Llama4(config)
    groups = {"embedding": 0, "attention": 0, "norms": 0, "router": 0, "routed_experts": 0, "shared_expert": 0,
              "dense_ffn": 0, "lm_head": 0}
    for name, param in model.named_parameters():
        if name.startswith("tok_embeddings"):
            groups["embedding"] += param.numel()
        elif name.startswith("output"):
            groups["lm_head"] += param.numel()
        elif "norm" in name:
            groups["norms"] += param.numel()
        elif ".attention." in name:
            groups["attention"] += param.numel()
        elif ".moe.router" in name:
            groups["router"] += param.numel()
        elif ".moe.experts" in name:
            groups["routed_experts"] += param.numel()
        elif ".moe.shared" in name:
            groups["shared_expert"] += param.numel()
        else:
            groups["dense_ffn"] += param.numel()
    layers = "".join(("M" if config.is_moe(i) else "D") + ("n" if config.is_nope(i) else "r")
                     for i in range(config.n_layers))
    return {
        "total_params": model.num_params(),
        "active_params": model.num_params(active=True),
        "groups": groups,
        "layers": layers,
        "config": config.model_dump(mode="json"),
    }


def format_info(name: str, info: dict) -> str:
    lines = [
        f"{name}: {info['total_params'] / 1e9:,.2f}B total, {info['active_params'] / 1e9:,.2f}B active per token",
        *(f"  {group:<15} {count / 1e9:>10,.3f}B" for group, count in info["groups"].items()),
        f"  layers (M=MoE D=dense, r=RoPE+chunked n=NoPE): {info['layers']}",
    ]
    return "\n".join(lines)
