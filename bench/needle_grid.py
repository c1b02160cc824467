"""The midtrain stage's needle grid: ``tasks.midtrain.stage.needle_grid`` on a mid-trained model, as the stage runs it.

    .venv/bin/python bench/needle_grid.py --model .herd/artifacts/midtrain/scout/<hash> \\
        --tokenizer .herd/artifacts/tokenizer/<hash> [--grid grid.json]

The grid is the preset's (``midtrain.eval_lengths`` x ``eval_depths`` x temperature tuning on
and off, ``eval_trials`` needles a cell). Prints wall and CPU seconds; ``--grid`` writes each
cell's recall, to compare two trees' results.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a midtrain stage output")
    parser.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer stage output")
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--grid", type=Path, default=None, help="write each cell's recall here (JSON)")
    args = parser.parse_args()

    from herd.pipeline import load_config
    from tasks.midtrain.needles import NeedleMaker
    from tasks.midtrain.stage import needle_grid
    from tasks.model.artifacts import load_model

    config = load_config(args.preset, {}).midtrain
    model = load_model(args.model, max_seq_len=config.seq_len).eval()
    maker = NeedleMaker(args.tokenizer / "tokenizer.json")
    wall, cpu = time.perf_counter(), time.process_time()
    grid = needle_grid(model, maker, args.tokenizer / "tokens", config)
    print(json.dumps({"cells": len(grid), "wall_s": round(time.perf_counter() - wall, 1),
                      "cpu_s": round(time.process_time() - cpu, 1)}))
    if args.grid:
        args.grid.write_text(json.dumps(grid))


if __name__ == "__main__":
    main()
