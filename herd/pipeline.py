"""The Llama 4 pipeline: its stages in order, and one typed config holding every stage's section.

A preset is a function returning a :class:`PipelineConfig`; a config file or ``--set``
overrides are applied on top of it and validated as a whole, so an unknown or ill-typed
field anywhere fails before any work starts.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from herd.config import ConfigError, StageConfig, apply_overrides, deep_merge, explain_validation_error
from herd.stage import Input, Resources, StageSpec
from herd.stages.codistill import CodistillConfig
from herd.stages.datamix import DatamixConfig
from herd.stages.dpo import DPOConfig
from herd.stages.gate import GateConfig
from herd.stages.midtrain import MidtrainConfig
from herd.stages.models import STUDENTS, TEACHER, VARIANTS, ModelsConfig
from herd.stages.pretrain import PretrainConfig
from herd.stages.problems import ProblemsConfig
from herd.stages.rl import RLConfig
from herd.stages.safety import CyberSecEvalConfig, GoatConfig, GuardsConfig, SafetyConfig
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

    def read_fields(self, spec: StageSpec) -> dict[str, Any]:
        """The versioned values of the other sections' fields ``spec`` reads (``spec.reads``), dotted."""
        fields: dict[str, Any] = {}
        for name in spec.reads:
            section, _, field = name.partition(".")
            values = getattr(self, section).versioned_fields(prefix=f"{section}.")
            fields.update(values if not field else {name: values[name]})
        return fields


def _per_variant(variants, **spec) -> list[StageSpec]:
    """One spec per variant; ``{variant}`` in an input's ``from_stage`` names the same variant's stage."""
    specs = []
    for variant in variants:
        inputs = {key: replace(slot, from_stage=slot.from_stage.format(variant=variant) if slot.from_stage else None)
                  for key, slot in spec["inputs"].items()}
        specs.append(StageSpec(**{**spec, "inputs": inputs}, variant=variant))
    return specs


_POST_TRAINING_INPUTS = {
    "tokens": Input("the tokenizer output (tokenizer and chat template)", from_stage="tokenizer"),
    "problems": Input("the problems output (train.jsonl, eval.jsonl)", from_stage="problems"),
}
_SFT_INPUTS = {"judge": Input("the teacher that judges difficulty", from_stage="behemoth.pretrain"),
               **_POST_TRAINING_INPUTS}
_SFT = dict(
    name="sft",
    summary="judge-pruned SFT: drop the easiest share by the teacher's judgement, train on assistant tokens",
    config_type=SFTConfig,
    config_section="sft",
    resources=Resources(cpu="32", memory="480Gi", gpus=8, shm="64Gi"),
    resumable=True,
)

_PRETRAIN = dict(
    name="pretrain",
    summary="train a Llama 4 MoE from scratch on the packed token shards, resumable from checkpoints",
    config_type=PretrainConfig,
    config_section="pretrain",
    resources=Resources(cpu="32", memory="480Gi", gpus=8, shm="64Gi"),
    resumable=True,
)
_PRETRAIN_INPUTS = {"tokens": Input("the tokenizer output (token shards and tokenizer)", from_stage="tokenizer"),
                    # Retraining continues from the variant's champion instead of random weights.
                    "init": Input("a model output to start from instead of random weights", optional=True)}

STAGES: list[StageSpec] = [
    StageSpec(
        name="datamix",
        summary="normalise, identify language, filter, deduplicate and budget the raw corpus into text shards",
        config_type=DatamixConfig,
        config_section="datamix",
        inputs={"corpus": Input("JSONL/Parquet file, folder or s3:// prefix; empty for the UDHR seed corpus")},
        resources=Resources(cpu="4", memory="16Gi"),
    ),
    StageSpec(
        name="tokenizer",
        summary="train a byte-level BPE with Llama 4 special tokens and write packed token shards",
        config_type=TokenizerConfig,
        config_section="tokenizer",
        inputs={"mix": Input("the datamix output", from_stage="datamix"),
                # Retraining keeps the champion's tokenizer: continued pretraining needs its token ids.
                "base": Input("a tokenizer or model output whose tokenizer to keep instead of training one",
                              optional=True)},
        resources=Resources(cpu="4", memory="16Gi"),
    ),
    # The teacher pretrains first; its top-k over the students' windows is cached once
    # (stage codistill) and both students pretrain against it (LLAMA4_SPEC §2.3).
    *_per_variant((TEACHER,), **_PRETRAIN, inputs=_PRETRAIN_INPUTS),
    StageSpec(
        name="codistill",
        summary="cache the teacher's top-k log-probabilities over the students' pretraining windows, once for all",
        config_type=CodistillConfig,
        config_section="codistill",
        inputs={"teacher": Input("the teacher's pretrain output", from_stage=f"{TEACHER}.pretrain"),
                "tokens": Input("the tokenizer output (token shards and tokenizer)", from_stage="tokenizer")},
        # The cache covers the windows the students' pretraining reads.
        reads=("pretrain.seq_len", "pretrain.batch_size", "pretrain.steps", "pretrain.seed"),
        resources=Resources(cpu="8", memory="120Gi", gpus=8, shm="16Gi"),
    ),
    *_per_variant(STUDENTS, **_PRETRAIN, reads=("codistill",), inputs={
        **_PRETRAIN_INPUTS,
        "teacher": Input("the teacher's pretrain output (codistill.teacher_source=online)",
                         from_stage=f"{TEACHER}.pretrain", optional=True),
        "teacher_cache": Input("the codistill output: the teacher's cached top-k (codistill.teacher_source=cache)",
                               from_stage="codistill", optional=True),
    }),
    StageSpec(
        name="problems",
        summary="build prompt/answer sets with checkers (UDHR tasks, arithmetic, strings, sandboxed code)",
        config_type=ProblemsConfig,
        config_section="problems",
        inputs={"udhr": Input("UDHR JSONL (aligned articles), file, folder or s3:// prefix; empty for the seed corpus")},
        resources=Resources(cpu="2", memory="4Gi"),
    ),
    *_per_variant(
        STUDENTS,
        name="midtrain",
        summary="continue a student at a longer context on long documents with needles; needle-retrieval heatmaps",
        config_type=MidtrainConfig,
        config_section="midtrain",
        inputs={"model": Input("the variant's pretrain output", from_stage="{variant}.pretrain"),
                "tokens": Input("the tokenizer output (token shards and tokenizer)", from_stage="tokenizer")},
        resources=Resources(cpu="32", memory="480Gi", gpus=8, shm="64Gi"),
        resumable=True,
    ),
    # Behemoth fine-tunes its pretrained model; the students their mid-trained one. The
    # teacher judges every example's difficulty for all three.
    *_per_variant((TEACHER,), **_SFT, inputs={"model": Input("the model to fine-tune", from_stage="behemoth.pretrain"),
                                              **_SFT_INPUTS}),
    *_per_variant(STUDENTS, **_SFT, inputs={"model": Input("the model to fine-tune", from_stage="{variant}.midtrain"),
                                            **_SFT_INPUTS}),
    *_per_variant(
        VARIANTS,
        name="rl",
        summary="online GRPO-style RL with a pass@k curriculum, rewards from the problems' checkers",
        config_type=RLConfig,
        config_section="rl",
        inputs={"model": Input("the variant's SFT output", from_stage="{variant}.sft"), **_POST_TRAINING_INPUTS},
        resources=Resources(cpu="32", memory="480Gi", gpus=8, shm="64Gi"),
        resumable=True,
    ),
    *_per_variant(
        STUDENTS,
        name="dpo",
        summary="lightweight DPO on on-policy pairs from the RL policy's hard prompts",
        config_type=DPOConfig,
        config_section="dpo",
        inputs={"model": Input("the variant's RL output", from_stage="{variant}.rl"), **_POST_TRAINING_INPUTS},
        resources=Resources(cpu="32", memory="480Gi", gpus=8, shm="64Gi"),
        resumable=True,
    ),
]
# The gate checks every variant's final model against thresholds and the champion, and registers it.
# Its inputs are the stages whose summaries hold the figures it checks; ``model`` is the final one.
# A variant's safety stage feeds its gate as well.
_FINAL_MODEL = {TEACHER: "rl", **{student: "dpo" for student in STUDENTS}}
# The guards train once, from data they build; every variant's safety stage reads the same ones.
_CYBERSECEVAL = Input("a folder or s3:// prefix holding PurpleLlama's CyberSecEval JSON files; empty: "
                      "HERD_CYBERSECEVAL_URI, $HERD_HOME/cyberseceval or the repository's data/cyberseceval, "
                      "the first there (none: the benchmarks are skipped)", optional=True)
STAGES += [
    StageSpec(
        name="guards",
        summary="build guard data and train a Llama-Guard-style output and a Prompt-Guard-style input classifier",
        config_type=GuardsConfig,
        config_section="guards",
        inputs={"cyberseceval": _CYBERSECEVAL},
        reads=("safety.datasets",),  # which files of the cyberseceval input are the held-out sets
        resources=Resources(cpu="4", memory="8Gi"),
    ),
    *(StageSpec(
        name="safety",
        summary="CyberSecEval benchmarks and GOAT multi-turn red teaming of the final model, judged with the guards",
        config_type=SafetyConfig,
        config_section="safety",
        variant=variant,
        inputs={"model": Input("the variant's final model", from_stage=f"{variant}.{_FINAL_MODEL[variant]}"),
                "guards": Input("the guards output", from_stage="guards"),
                "cyberseceval": _CYBERSECEVAL},
        # herd's sampler answers on one device; a model too big for one GPU is evaluated through an endpoint.
        resources=Resources(cpu="8", memory="120Gi", gpus=1, shm="16Gi"),
        version=2,  # 2: a benchmark whose judge gave no verdict has no figure (was: a rate of 0)
    ) for variant in VARIANTS),
]
_GATE_FIGURES = {variant: tuple(name for name in ("midtrain", "sft", "rl", "safety")
                                if name != _FINAL_MODEL[variant] and any(s.id == f"{variant}.{name}" for s in STAGES))
                 for variant in VARIANTS}
STAGES += [
    StageSpec(
        name="gate",
        summary="check the final model's figures against thresholds and the champion; register it as candidate",
        config_type=GateConfig,
        config_section="gate",
        variant=variant,
        inputs={"model": Input("the variant's final model (Hugging Face export in hf/)",
                               from_stage=f"{variant}.{_FINAL_MODEL[variant]}"),
                **{name: Input(f"the {name} output, whose summary holds figures the gate checks",
                               from_stage=f"{variant}.{name}") for name in _GATE_FIGURES[variant]}},
        resources=Resources(cpu="2", memory="8Gi"),
    )
    for variant in VARIANTS
]
# The stages whose figures a gate threshold may name.
GATED_STAGES: tuple[str, ...] = tuple(dict.fromkeys(
    name for variant in VARIANTS for name in (*_GATE_FIGURES[variant], _FINAL_MODEL[variant])))
STAGES_BY_ID: dict[str, StageSpec] = {spec.id: spec for spec in STAGES}
# Stage names, each once (pretrain runs per variant): what a user selects and `herd stage` takes.
STAGE_NAMES: list[str] = list(dict.fromkeys(spec.name for spec in STAGES))


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


def nano() -> PipelineConfig:
    """Runs end to end on a laptop CPU in minutes: small problem sets, short RL and DPO."""
    return PipelineConfig(
        preset="nano",
        problems=ProblemsConfig(count_arithmetic=300, count_strings=300, count_code=60, count_translate=150,
                                count_language_id=200, count_continue=200),
        sft=SFTConfig(steps=40, eval_max_items=16, max_new_tokens=24),
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


def load_config(preset_or_file: str, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """A preset name, or a JSON/YAML file ``{preset: nano, datamix: {...}}``, plus dotted overrides."""
    data = _base_data(preset_or_file)
    data = apply_overrides(data, overrides or {})
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise explain_validation_error(PipelineConfig, err) from None


def _base_data(preset_or_file: str) -> dict[str, Any]:
    if preset_or_file in PRESETS:
        return PRESETS[preset_or_file]().model_dump(mode="json")
    path = Path(preset_or_file)
    if not path.is_file():
        raise ConfigError(
            f"config {preset_or_file!r} is neither a preset ({', '.join(PRESETS)}) nor a readable file"
        )
    text = path.read_text()
    if path.suffix in {".yaml", ".yml"}:
        import yaml  # only when a YAML file is given: the contract itself needs stdlib + pydantic

        loaded = yaml.safe_load(text)
    else:
        loaded = json.loads(text)
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(loaded).__name__}")
    preset = loaded.get("preset", "nano")
    if preset not in PRESETS:
        raise ConfigError(f"field 'preset' in {path}: {preset!r} is not one of {', '.join(PRESETS)}")
    return deep_merge(PRESETS[preset]().model_dump(mode="json"), loaded)


def override_schema() -> dict[str, Any]:
    """JSON schema of the overrides object, so that Airflow refuses an unknown or ill-typed field at trigger time."""
    properties: dict[str, Any] = {}
    sections = {spec.config_section: spec.config_type for spec in STAGES} | {"models": ModelsConfig}
    for section, config_type in sections.items():
        schema = config_type.model_json_schema()
        for name, field_schema in schema.get("properties", {}).items():
            if "$ref" in json.dumps(field_schema):
                field_schema = {}
            properties[f"{section}.{name}"] = {
                k: v for k, v in field_schema.items() if k not in {"title", "default"}
            }
    return {"type": "object", "properties": properties, "additionalProperties": False}
