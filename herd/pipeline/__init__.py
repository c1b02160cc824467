"""The Llama 4 pipeline: its stages in order, and one typed config holding every stage's section.

A preset is a function returning a :class:`PipelineConfig`; a config file or ``--set``
overrides are applied on top of it and validated as a whole, so an unknown or ill-typed
field anywhere fails before any work starts. Each stage's spec and config section live in
``herd/stages/``; this package assembles them.
"""

from herd.pipeline.config import PipelineConfig
from herd.pipeline.graph import GATED_STAGES, STAGE_NAMES, STAGES, STAGES_BY_ID, downstream_names, stage
from herd.pipeline.overrides import load_config, override_schema
from herd.pipeline.presets import PRESETS

__all__ = ["GATED_STAGES", "PRESETS", "STAGES", "STAGES_BY_ID", "STAGE_NAMES", "PipelineConfig", "downstream_names",
           "load_config", "override_schema", "stage"]
