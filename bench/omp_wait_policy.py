"""nano training steps with OpenMP's default wait policy against PASSIVE, which ``tasks/__init__.py`` sets.

    .venv/bin/python bench/omp_wait_policy.py                 # 3 alternating pairs, nano, 4 x 256 tokens
    .venv/bin/python bench/omp_wait_policy.py --busy 2        # with 2 competing processes, as in CI

Each measurement is a fresh process (the policy is read when libgomp loads); the two
policies alternate so machine noise hits both alike. ``--busy N`` starts N processes
that train nano in a loop beside the measurement, the situation of parallel stages or
tests on a few cores. Prints seconds per step and the ratio default / PASSIVE.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

STEPS = """
import sys, time, torch
sys.path.insert(0, {repo!r})
from herd.model import model_preset
from tasks.model.llama4 import Llama4
torch.manual_seed(0)
config = model_preset("nano")
model = Llama4(config)
model.init_weights()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
tokens = torch.randint(0, config.vocab_size, (4, 257))
steps = {steps}
for step in range(steps + 1):
    if step == 1:
        start = time.perf_counter()
    logits = model(tokens[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print((time.perf_counter() - start) / max(steps, 1))
"""


def seconds_per_step(policy: str | None, steps: int) -> float:
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    # python -c with the repo on sys.path but without importing the tasks package, which sets the policy.
    out = subprocess.run([sys.executable, "-c", STEPS.format(repo=str(REPO), steps=steps)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--busy", type=int, default=0, help="competing nano training processes")
    args = parser.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", STEPS.format(repo=str(REPO), steps=10**6)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(args.busy)]
    try:
        time.sleep(2 if busy else 0)
        default, passive = [], []
        for pair in range(args.pairs):
            default.append(seconds_per_step(None, args.steps))
            passive.append(seconds_per_step("PASSIVE", args.steps))
            print(f"pair {pair}: default {default[-1]:.3f} s/step, PASSIVE {passive[-1]:.3f} s/step", flush=True)
    finally:
        for process in busy:
            process.kill()
    d, p = statistics.median(default), statistics.median(passive)
    print(f"nano, {os.cpu_count()} cores, {args.busy} busy processes: default {d:.3f} s/step, PASSIVE {p:.3f} "
          f"s/step; default / PASSIVE = {d / p:.2f} (baseline: PASSIVE)")


if __name__ == "__main__":
    main()
