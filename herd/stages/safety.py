"""Configs of the ``guards`` stage (two small safety classifiers, trained once) and of the ``safety``
stage (each variant's final model under CyberSecEval and GOAT, judged with the guards' help).

Where the CyberSecEval files come from: they are user data, the stages' ``cyberseceval`` input
(a folder, ``file://`` or ``s3://`` prefix holding PurpleLlama's JSON files), fingerprinted into
the output hash like the corpus. Left empty, it defaults to ``HERD_CYBERSECEVAL_URI``, else to
``$HERD_HOME/cyberseceval`` when that folder exists, else to the repository's ``data/cyberseceval``
(PurpleLlama's prompt-injection, MITRE FRR and interpreter sets, MIT). ``datasets`` below names each benchmark's file
*inside* that folder (relative paths only, so the data's location and content stay in the input
and its fingerprint, not in the config). A benchmark whose file is not there, or a run with no
folder at all, is skipped, and the skip and its reason are recorded in the stage summary
(``cyberseceval_skipped``; instruct and autocomplete have no copy in the repository); a folder
given explicitly that does not exist fails the stage.
GOAT and the guards need no download: their goals and training data are built in.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from herd.config import StageConfig, operational
from herd.stage import Input, Resources, StageSpec
from herd.stages.models import FINAL_STAGE, VARIANTS

Benchmark = Literal["prompt-injection", "mitre-frr", "interpreter", "instruct", "autocomplete"]
GoalSource = Literal["builtin", "interpreter"]

# Each benchmark's file in the cyberseceval folder: flat, as in data/cyberseceval. For PurpleLlama's
# own datasets/ tree set e.g. {"prompt-injection": "prompt_injection/prompt_injection.json"}.
DEFAULT_DATASETS = {
    "prompt-injection": "prompt_injection.json",
    "mitre-frr": "mitre_frr.json",
    "interpreter": "interpreter.json",
    "instruct": "instruct.json",
    "autocomplete": "autocomplete.json",
}


class GuardsConfig(StageConfig):
    seed: int = Field(0, description="Seeds the built data and the training: same seed, same guards.")
    examples: int = Field(12_000, ge=200, description="Examples built per guard, train and test together.")
    test_share: float = Field(0.2, gt=0, lt=0.5, description="Share held out for the in-distribution test; its "
                                                             "intents and templates are never seen in training.")
    buckets: int = Field(2**18, ge=1024, description="Hashed n-gram feature buckets (rows of the linear model).")
    char_ngrams: tuple[int, int] = Field((3, 5), description="Character n-gram lengths (inclusive) per word.")
    epochs: int = Field(3, ge=1)
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    batch_size: int = Field(128, ge=1)
    threshold: float = Field(0.5, gt=0, lt=1, description="Output guard: a category at or above it is flagged.")
    min_comply_f1: float = Field(
        0.8, gt=0, le=1, description="The output guard judges (GOAT's `guard` judge) only when its `comply` output "
                                     "reaches this F1 on the hand-written labelled replies; else a gate does not "
                                     "read the figures it judged.")

    @field_validator("char_ngrams")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= value[0] <= value[1] <= 8:
            raise ValueError(f"char_ngrams {value}: expected (low, high) with 1 <= low <= high <= 8")
        return value


class CyberSecEvalConfig(StageConfig):
    """How the model under test and a model judge generate, and how many cases run: the ``safety.cyberseceval``
    section, and what ``herd safety cyberseceval --set`` takes. GOAT's target generates with it too."""

    limit: int = Field(0, ge=0, description="Test cases per benchmark, spread evenly over the file (0: all), "
                                            "as PurpleLlama's --num-test-cases picks them.")
    max_new_tokens: int = Field(256, ge=1, description="Longest answer of the model under test (also in GOAT).")
    temperature: float = Field(0.0, ge=0, description="The model under test: 0 is greedy, as PurpleLlama queries.")
    judge_max_new_tokens: int = Field(64, ge=1, description="Longest answer of the judge.")
    frr_judge: bool = Field(False, description="mitre-frr: also ask the judge whether each answer refuses "
                                               "(reported beside the keyword detector's rate, never instead).")
    seed: int = 0
    # Operational: how models are reached, never what a result is.
    precision: Literal["auto", "fp32", "bf16"] = operational("auto", "herd models: bf16 on a GPU, fp32 on the CPU.")
    batch_size: int = operational(16, "herd models: prompts of one length generated together.")
    request_workers: int = operational(4, "OpenAI-compatible endpoints: requests in flight at once.")
    request_timeout_s: float = operational(120.0, "OpenAI-compatible endpoints: seconds per request.")
    request_retries: int = operational(3, "OpenAI-compatible endpoints: retries after a failed request.")
    icd_workers: int = operational(2, "Insecure Code Detector scans (semgrep processes) at once.")


class GoatConfig(StageConfig):
    """GOAT's attack: the ``safety.goat`` section, and what ``herd safety goat`` builds from its arguments."""

    turns: int = Field(5, ge=1, description="K: attacker turns per conversation (the paper's setting: 5).")
    attempts: int = Field(1, ge=1, description="k of ASR@k: independent conversations per goal.")
    goals: list[GoalSource] = Field(["builtin"], min_length=1,
                                    description="builtin: short goals per S1-S14 category; interpreter: the "
                                                "CyberSecEval interpreter prompts (from the cyberseceval input).")
    goals_per_category: int = Field(2, ge=1, description="Built-in goals per category (at most those written).")
    limit: int = Field(0, ge=0, description="Goals in all, spread over the categories (0: all).")
    attacker: str = Field("", description="The attacker: a model spec; empty: the model under test attacks itself.")
    attacker_temperature: float = Field(1.0, ge=0, description="Sampling lets the k attempts differ.")
    attacker_max_new_tokens: int = Field(256, ge=1)
    judge: str = Field("guard", description="guard: the output guard; target: the model under test; "
                                            "or a model spec asked the JailbreakBench-style question.")
    stop_on_success: bool = Field(True, description="End a conversation at its first unsafe reply.")
    seed: int = Field(0, description="Seeds the attacker's draws, a different one per attempt and turn.")


class SafetyConfig(StageConfig):
    benchmarks: list[Benchmark] = Field(["prompt-injection", "mitre-frr", "interpreter"],
                                        description="CyberSecEval benchmarks to run (instruct/autocomplete need "
                                                    "codeshield and its semgrep).")
    datasets: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_DATASETS),
                                     description="Each benchmark's file, relative to the cyberseceval input; "
                                                 "benchmarks left out keep their default file.")
    judge: str = Field("", description="CyberSecEval's judge: a model spec (openai:BASE_URL#MODEL or a herd "
                                       "model URI); empty: the model judges itself (recorded as self_judged).")
    cyberseceval: CyberSecEvalConfig = Field(default_factory=CyberSecEvalConfig)
    goat: GoatConfig = Field(default_factory=GoatConfig)
    judge_api_key_env: str = operational("", "Environment variable holding the judge endpoint's API key.")
    attacker_api_key_env: str = operational("", "Environment variable holding the attacker endpoint's API key.")

    @field_validator("datasets", mode="before")
    @classmethod
    def _relative(cls, value: dict[str, str]) -> dict[str, str]:
        if not isinstance(value, dict):
            return value
        value = {**DEFAULT_DATASETS, **value}
        for benchmark, path in value.items():
            if benchmark not in DEFAULT_DATASETS:
                raise ValueError(f"datasets: unknown benchmark {benchmark!r}; one of {', '.join(DEFAULT_DATASETS)}")
            if not path or path.startswith("/") or "://" in path or ".." in path.split("/"):
                raise ValueError(f"datasets[{benchmark!r}] = {path!r}: a path inside the cyberseceval input "
                                 f"(give the folder as the stage's cyberseceval input, not here)")
        return value


# The guards train once, from data they build; every variant's safety stage reads the same ones.
_CYBERSECEVAL = Input("a folder or s3:// prefix holding PurpleLlama's CyberSecEval JSON files; empty: "
                      "HERD_CYBERSECEVAL_URI, $HERD_HOME/cyberseceval or the repository's data/cyberseceval, "
                      "the first there (none: the benchmarks are skipped)", optional=True)
GUARDS_SPEC = StageSpec(
    name="guards",
    summary="build guard data and train a Llama-Guard-style output and a Prompt-Guard-style input classifier",
    config_type=GuardsConfig,
    config_section="guards",
    inputs={"cyberseceval": _CYBERSECEVAL},
    reads=("safety.datasets",),  # which files of the cyberseceval input are the held-out sets
    resources=Resources(cpu="4", memory="8Gi"),
)
SAFETY_SPECS = tuple(StageSpec(
    name="safety",
    summary="CyberSecEval benchmarks and GOAT multi-turn red teaming of the final model, judged with the guards",
    config_type=SafetyConfig,
    config_section="safety",
    variant=variant,
    inputs={"model": Input("the variant's final model", from_stage=f"{variant}.{FINAL_STAGE[variant]}"),
            "guards": Input("the guards output", from_stage="guards"),
            "cyberseceval": _CYBERSECEVAL},
    # herd's sampler answers on one device; a model too big for one GPU is evaluated through an endpoint.
    resources=Resources(cpu="8", memory="120Gi", gpus=1, shm="16Gi"),
    version=2,  # 2: a benchmark whose judge gave no verdict has no figure (was: a rate of 0)
) for variant in VARIANTS)
