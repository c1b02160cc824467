"""Config of the ``pretrain`` stage: a Llama 4 model from scratch on the tokenizer's packed shards.

Which model each variant trains comes from the pipeline's ``models`` section; this section
holds what the variants share.
"""

from __future__ import annotations

from pydantic import Field

from herd.stages.training import TrainingConfig


class PretrainConfig(TrainingConfig):
    init_std: float = Field(0.02, gt=0)
    mup_base_dim: int | None = Field(
        None, gt=0, description="µP: the width the LR and init were tuned at; None trains in the standard parametrisation."
    )
