"""What a stage's ``run`` receives: its spec, its typed config section, the whole pipeline config, its inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from herd.config import StageConfig
from herd.pipeline import PipelineConfig
from herd.stage import StageSpec
from tasks.runtime.tracking import StageRun

C = TypeVar("C", bound=StageConfig)


@dataclass
class StageContext(Generic[C]):
    """A stage writes its outputs under ``workdir``; ``config`` is its own section of ``pipeline``."""

    spec: StageSpec
    run_id: str
    pipeline: PipelineConfig
    config: C
    inputs: dict[str, str]
    output_uri: str
    workdir: Path
    tracker: StageRun
    summary: dict[str, Any] = field(default_factory=dict)
    rank: int = 0  # under torchrun, only rank 0 writes outputs and tracks

    @property
    def variant(self) -> str | None:
        return self.spec.variant

    @property
    def model_preset(self) -> str:
        return self.pipeline.models.preset(self.spec.variant or "scout")

    @property
    def is_main(self) -> bool:
        return self.rank == 0
