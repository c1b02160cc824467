"""The prompts an RL run leaves in its pool, ``pool.json`` in its output: hardest first, the DPO stage's prompt set.

    hard = hard_prompt_ids(rl_output)   # what stage ``dpo`` reads of stage ``rl``'s output
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.rl.passk import PromptPool

POOL = "pool.json"


def write_pool(workdir: Path, pool: PromptPool) -> Path:
    """``pool.json``: the prompts left in the pool (medium-to-hard for the final policy), the solved ones, stats."""
    path = workdir / POOL
    state = pool.state_dict()
    active = sorted(state["active"], key=lambda i: state["stats"].get(i, {}).get("pass@1", 0.0))
    path.write_text(json.dumps({"active": active, "solved": state["solved"], "stats": state["stats"]}, indent=1))
    return path


def hard_prompt_ids(rl_output: Path) -> list[str]:
    """The ids an RL run left in its pool, hardest first: DPO's small hard prompt set."""
    return json.loads((Path(rl_output) / POOL).read_text())["active"]
