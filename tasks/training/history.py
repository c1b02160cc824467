"""What a training run leaves behind for its reports: the loss per step, the tokens per language, the expert load,
throughput and MFU. It is saved with every checkpoint (as JSON) and restored with it, so that the reports of a
resumed run cover the steps before the resume too."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass
class History:
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # next-token loss
    objective_losses: list[float] = field(default_factory=list)  # what the optimiser saw, when a mix (co-distillation)
    load_sum: list[list[float]] | None = None  # summed per-layer expert shares, averaged at the end
    load_count: int = 0
    tokens_by_language: Counter = field(default_factory=Counter)
    tokens_per_second: list[float] = field(default_factory=list)
    mfu: list[float] = field(default_factory=list)

    def record(self, step: int, loss: float, languages: Counter, objective: float | None = None) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        if objective is not None:
            self.objective_losses.append(objective)
        self.tokens_by_language.update(languages)

    def to_json(self) -> dict:
        """Plain JSON; floats survive the round trip exactly."""
        return asdict(self) | {"tokens_by_language": dict(self.tokens_by_language)}

    @classmethod
    def from_json(cls, saved: dict) -> History:
        unknown = set(saved) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"saved training history has unknown fields: {', '.join(sorted(unknown))}")
        return cls(**saved | {"tokens_by_language": Counter(saved.get("tokens_by_language", {}))})
