"""What a stage is: its name, its inputs, its config type and the resources it asks for."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from herd.config import StageConfig

# The last line a stage prints on stdout: how the local backend learns the output URI.
OUTPUT_LINE_PREFIX = "HERD_OUTPUT="
# Exit statuses of `herd stage` that the operators read. A refused config or input: retrying
# cannot help, so the task fails at once. A stage left out of the run, with no cached output,
# that no selected stage needs: the task is skipped (Airflow's convention for "skip" is 99).
BAD_INPUT_EXIT = 2
SKIP_EXIT = 99


@dataclass(frozen=True)
class Input:
    """An input slot. ``from_stage`` names the stage that produces it; ``None`` means a user-given URI."""

    description: str
    from_stage: str | None = None  # a stage id, e.g. "tokenizer" or "scout.pretrain"
    # An optional input may be left out of a single `herd stage` run; the stage says
    # when its config needs it after all. The DAG always wires it.
    optional: bool = False


@dataclass(frozen=True)
class Resources:
    """What one pod of the stage needs, exactly as its pod asks for it; ``nodes > 1`` makes it a gang.

    A GPU pod runs ``herd launch`` with ``workers`` processes: one per GPU, unless one process
    drives several (``gpus_per_worker``, e.g. RL's trainer with its sampler on a second GPU).
    """

    cpu: str = "2"
    memory: str = "8Gi"
    gpus: int = 0
    shm: str = "1Gi"
    nodes: int = 1
    gpus_per_worker: int = 1

    def __post_init__(self) -> None:
        if self.gpus % self.gpus_per_worker:
            raise ValueError(f"{self.gpus} GPUs do not split into workers of {self.gpus_per_worker}")

    @property
    def pool(self) -> str:
        return "gpu" if self.gpus else "cpu"

    @property
    def workers(self) -> int:
        return max(1, self.gpus // self.gpus_per_worker)


@dataclass(frozen=True)
class StageSpec:
    name: str
    summary: str
    config_type: type[StageConfig]
    config_section: str
    inputs: dict[str, Input] = field(default_factory=dict)
    # A model stage runs once per Llama 4 variant (behemoth, scout, maverick): same code and
    # config section, its own model preset, output folder and Airflow task.
    variant: str | None = None
    resources: Resources = Resources()
    # How long one attempt may run before Airflow stops it (its task's execution_timeout).
    timeout: timedelta = timedelta(hours=4)
    # Bump when the stage's output changes for the same inputs and config: it is part
    # of the output hash, so every cached result of the old code is recomputed.
    version: int = 1
    # A resumable stage keeps partial output (checkpoints) between attempts; others
    # start from an empty output folder on every attempt.
    resumable: bool = False
    # Fields of other config sections that change this stage's output, dotted
    # ("pretrain.seq_len") or a whole section ("codistill"): they enter the output hash.
    reads: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """``scout.pretrain``: the task id Airflow gives the stage inside its variant's task group."""
        return f"{self.variant}.{self.name}" if self.variant else self.name

    @property
    def artifact_path(self) -> str:
        """Where outputs go under the artifact root: ``pretrain/scout/<hash>``."""
        return f"{self.name}/{self.variant}" if self.variant else self.name

    @property
    def upstream(self) -> list[str]:
        """Ids of the stages whose outputs this one reads."""
        return list(dict.fromkeys(i.from_stage for i in self.inputs.values() if i.from_stage))
