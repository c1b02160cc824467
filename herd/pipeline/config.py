"""One typed config holding every stage's section, validated as a whole."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator

from herd.config import StageConfig
from herd.pipeline.graph import GATED_STAGES
from herd.stage import StageSpec
from herd.stages.codistill import CodistillConfig
from herd.stages.datamix import DatamixConfig
from herd.stages.dpo import DPOConfig
from herd.stages.gate import GateConfig
from herd.stages.midtrain import MidtrainConfig
from herd.stages.models import ModelsConfig
from herd.stages.pretrain import PretrainConfig
from herd.stages.problems import ProblemsConfig
from herd.stages.rl import RLConfig
from herd.stages.safety import GuardsConfig, SafetyConfig
from herd.stages.sft import SFTConfig
from herd.stages.tokenizer import TokenizerConfig


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str
    models: ModelsConfig = ModelsConfig()
    datamix: DatamixConfig = DatamixConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    pretrain: PretrainConfig = PretrainConfig()
    codistill: CodistillConfig = CodistillConfig()
    midtrain: MidtrainConfig = MidtrainConfig()
    problems: ProblemsConfig = ProblemsConfig()
    sft: SFTConfig = SFTConfig()
    rl: RLConfig = RLConfig()
    dpo: DPOConfig = DPOConfig()
    guards: GuardsConfig = GuardsConfig()
    safety: SafetyConfig = SafetyConfig()
    gate: GateConfig = GateConfig()

    @model_validator(mode="after")
    def _longer_context(self) -> "PipelineConfig":
        if self.midtrain.seq_len <= self.pretrain.seq_len:
            raise ValueError(f"midtrain.seq_len ({self.midtrain.seq_len}) must exceed pretrain.seq_len "
                             f"({self.pretrain.seq_len}): mid-training extends the context")
        return self

    @model_validator(mode="after")
    def _gated_figures_exist(self) -> PipelineConfig:
        gated = set(GATED_STAGES)
        named = [*self.gate.thresholds, *(f for bars in self.gate.variant_thresholds.values() for f in bars)]
        unknown = sorted({figure for figure in named if figure.partition(".")[0] not in gated})
        if unknown:
            raise ValueError(f"gate threshold {unknown[0]!r}: the gate reads figures of {', '.join(sorted(gated))}, "
                             f"not {unknown[0].partition('.')[0]!r}")
        return self

    def section(self, spec: StageSpec) -> StageConfig:
        return getattr(self, spec.config_section)
