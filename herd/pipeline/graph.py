"""The pipeline's stages in the order they run, and what reads what.

Each stage's spec is declared beside its config in ``herd/stages/``; this module only
puts them in order.
"""

from __future__ import annotations

from herd.config import ConfigError
from herd.stage import StageSpec
from herd.stages import codistill, datamix, dpo, gate, midtrain, pretrain, problems, rl, safety, sft, tokenizer

_BEFORE_GATES: list[StageSpec] = [
    datamix.SPEC,
    tokenizer.SPEC,
    # The teacher pretrains first; its top-k over the students' windows is cached once
    # (codistill) and both students pretrain against it.
    pretrain.TEACHER_SPEC,
    codistill.SPEC,
    *pretrain.STUDENT_SPECS,
    problems.SPEC,
    *midtrain.SPECS,
    *sft.SPECS,
    *rl.SPECS,
    *dpo.SPECS,
    safety.GUARDS_SPEC,
    *safety.SAFETY_SPECS,
]
_GATES = gate.specs(_BEFORE_GATES)
STAGES: list[StageSpec] = [*_BEFORE_GATES, *_GATES]
STAGES_BY_ID: dict[str, StageSpec] = {spec.id: spec for spec in STAGES}
# Stage names, each once (pretrain runs per variant): what a user selects and `herd stage` takes.
STAGE_NAMES: list[str] = list(dict.fromkeys(spec.name for spec in STAGES))
# The stages whose figures a gate threshold may name.
GATED_STAGES: tuple[str, ...] = gate.gated_stages(_GATES)


def downstream_names(stage_id: str) -> list[str]:
    """Names of the stages that read ``stage_id``'s output, directly or through others.

    A stage left out of a run is needed only if one of these is selected.
    """
    found: set[str] = set()
    frontier = [stage_id]
    while frontier:
        current = frontier.pop()
        for spec in STAGES:
            if current in spec.upstream and spec.id not in found:
                found.add(spec.id)
                frontier.append(spec.id)
    return [name for name in STAGE_NAMES if any(STAGES_BY_ID[i].name == name for i in found)]


def stage(name: str, variant: str | None = None) -> StageSpec:
    """The spec of stage ``name`` (for ``variant`` when the stage runs per variant)."""
    if name not in STAGE_NAMES:
        raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
    variants = [spec.variant for spec in STAGES if spec.name == name]
    if variant is None and variants != [None]:
        raise ConfigError(f"stage {name} runs per variant: give --variant ({', '.join(variants)})")
    if variant is not None and variant not in variants:
        raise ConfigError(f"stage {name} has no variant {variant!r}; variants: "
                          f"{', '.join(v for v in variants if v) or 'none'}")
    return STAGES_BY_ID[f"{variant}.{name}" if variant else name]
