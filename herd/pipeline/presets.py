"""Presets: functions returning a whole :class:`PipelineConfig`, sized for a machine."""

from __future__ import annotations

from typing import Callable

from herd.pipeline.config import PipelineConfig
from herd.stages.datamix import DatamixConfig
from herd.stages.dpo import DPOConfig
from herd.stages.midtrain import MidtrainConfig
from herd.stages.models import ModelsConfig
from herd.stages.pretrain import PretrainConfig
from herd.stages.problems import ProblemsConfig
from herd.stages.rl import RLConfig
from herd.stages.safety import CyberSecEvalConfig, GoatConfig, GuardsConfig, SafetyConfig
from herd.stages.sft import SFTConfig
from herd.stages.tokenizer import TokenizerConfig


def nano() -> PipelineConfig:
    """Runs end to end on a laptop CPU in minutes: small problem sets, short RL and DPO."""
    return PipelineConfig(
        preset="nano",
        problems=ProblemsConfig(count_arithmetic=300, count_strings=300, count_code=60, count_translate=150,
                                count_language_id=200, count_continue=200),
        # The pruned-against-unpruned comparison is herd ablate's, over seeds; the demo trains the pruned arm only.
        sft=SFTConfig(steps=40, eval_max_items=16, max_new_tokens=24, compare_unpruned=False),
        rl=RLConfig(rounds=6, pool_size=8, group_size=4, prompts_per_round=4, max_new_tokens=24),
        dpo=DPOConfig(steps=20, prompts=8, samples_per_prompt=4, max_new_tokens=24),
        guards=GuardsConfig(examples=4000),
        # A barely trained model rarely stops early: nearly every answer costs its max_new_tokens.
        safety=SafetyConfig(cyberseceval=CyberSecEvalConfig(limit=12, max_new_tokens=24, judge_max_new_tokens=8),
                            goat=GoatConfig(turns=2, goals_per_category=1, limit=7, attacker_max_new_tokens=24)),
    )


def small() -> PipelineConfig:
    """One H100 node: a bigger mix and vocabulary."""
    return PipelineConfig(
        preset="small",
        datamix=DatamixConfig(floor_tokens=50_000, report_token_floor=100_000, num_shards=64),
        tokenizer=TokenizerConfig(vocab_size=32_768, num_reserved_special_tokens=256, sample_chars_per_language=200_000),
        models=ModelsConfig(behemoth="small_behemoth", scout="small", maverick="small_maverick"),
        pretrain=PretrainConfig(seq_len=4096, batch_size=64, steps=20_000, lr=1e-3,
                                warmup_steps=500, schedule="wsd", checkpoint_every=500, log_every=10),
        midtrain=MidtrainConfig(seq_len=32_768, batch_size=8, steps=2_000, lr=3e-4, warmup_steps=100,
                                checkpoint_every=200, log_every=10, eval_lengths=[4096, 16_384, 32_768, 65_536],
                                eval_trials=20),
    )


PRESETS: dict[str, Callable[[], PipelineConfig]] = {"nano": nano, "small": small}
