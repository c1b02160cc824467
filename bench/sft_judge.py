"""The SFT judge's time: ``tasks.sft.judge.difficulty`` over the train and held-out examples an sft stage judges.

    .venv/bin/python bench/sft_judge.py --problems .herd/artifacts/problems/<hash> \\
        --tokenizer .herd/artifacts/tokenizer/<hash> --judge-model .herd/artifacts/pretrain/behemoth/<hash>
    .venv/bin/python bench/sft_judge.py ... --judge teacher_passk --limit 200 --scores passk.json

The inputs are the nano demo's outputs (``problems``, ``tokenizer``, ``behemoth.pretrain``);
the examples are those the stage renders (``train.jsonl``, then the first
``sft.eval_max_items`` of ``eval.jsonl``), judged in one process as the stage does it.
Prints wall and CPU seconds; ``--scores`` writes the scores, to compare two trees' results.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=Path, required=True, help="a problems stage output")
    parser.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer stage output")
    parser.add_argument("--judge-model", type=Path, required=True, help="a model stage output (behemoth.pretrain)")
    parser.add_argument("--judge", default="teacher_loss", help="sft.judge")
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--limit", type=int, default=None, help="judge only the first N examples")
    parser.add_argument("--scores", type=Path, default=None, help="write the scores here (JSON)")
    args = parser.parse_args()

    from herd.pipeline import load_config
    from tasks.model.artifacts import load_model
    from tasks.problems.chat import load_tokenizer
    from tasks.problems.item import read_jsonl
    from tasks.sft.data import render_examples
    from tasks.sft.judge import difficulty

    config = load_config(args.preset, {"sft.judge": args.judge}).sft
    tokenizer = load_tokenizer(args.tokenizer)
    train, _ = render_examples(tokenizer, read_jsonl(args.problems / "train.jsonl"), config.seed, config.seq_len + 1)
    held_out, _ = render_examples(tokenizer, read_jsonl(args.problems / "eval.jsonl")[: config.eval_max_items],
                                  config.seed, config.seq_len + 1)
    examples = (train + held_out)[: args.limit]
    model = load_model(args.judge_model).eval()
    wall, cpu = time.perf_counter(), time.process_time()
    scores = difficulty(config, model, tokenizer, examples)
    print(json.dumps({"judge": args.judge, "examples": len(examples), "wall_s": round(time.perf_counter() - wall, 1),
                      "cpu_s": round(time.process_time() - cpu, 1)}))
    if args.scores:
        args.scores.write_text(json.dumps(scores))


if __name__ == "__main__":
    main()
