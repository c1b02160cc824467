"""The one GPU check: the GPU-marked tests, then ``small``'s training speed in bf16 and FP8, into one JSON file.

    python bench/gpu_check.py --out gpu-check          # on a lent H100/H200, about 6 minutes, at most 10
    python bench/gpu_check.py --dry-run --out /tmp/gc  # the same steps on the CPU at nano, in seconds

It writes ``OUT/gpu_check.json``: the machine (GPU, torch, torchao, CUDA), each GPU test's
outcome (``pytest -m gpu tests/test_gpu.py``, also as ``OUT/gpu_tests.xml``), and
``bench/gpu_train.py``'s tokens/s, MFU and peak memory for herd in bf16 and FP8 and for
transformers' Llama 4 in bf16, with FP8's and transformers' speed as ratios to herd's bf16
step measured in the same run. The exit status is non-zero when a test failed or a
measurement broke. The dry run proves the script's plumbing where no GPU is lent
(``tests/test_bench.py`` runs it); it runs nano on the CPU, where the GPU tests skip and FP8
reports why it cannot run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# small at 4096 tokens is what the GPU presets train; nano at 64 only exercises the code path.
FULL = {"preset": "small", "seq": 4096, "batch": 4, "steps": 10, "device": "cuda"}
DRY = {"preset": "nano", "seq": 64, "batch": 2, "steps": 2, "device": "cpu"}


def environment() -> dict:
    import torch

    try:
        import torchao

        torchao_version = torchao.__version__
    except ImportError:
        torchao_version = None
    cuda = torch.cuda.is_available()
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "torchao": torchao_version,
        "python": platform.python_version(), "revision": revision.stdout.strip() or None,
    }


def run_tests(out: Path, timeout: int) -> dict:
    """``pytest -m gpu``; each test's outcome from the JUnit report."""
    report = out / "gpu_tests.xml"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", "-p",
                             "no:cacheprovider", f"--junitxml={report}", f"--timeout={timeout}"],
                            cwd=REPO, capture_output=True, text=True)
    outcomes = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            failed = case.find("failure") if case.find("failure") is not None else case.find("error")
            skipped = case.find("skipped")
            if failed is not None:
                outcomes[case.get("name")] = {"outcome": "failed", "message": (failed.get("message") or "")[:500]}
            elif skipped is not None:
                outcomes[case.get("name")] = {"outcome": "skipped", "message": skipped.get("message") or ""}
            else:
                outcomes[case.get("name")] = {"outcome": "passed", "seconds": float(case.get("time", 0))}
    return {"exit_code": result.returncode, "seconds": round(time.perf_counter() - started, 1),
            "tests": outcomes, "tail": result.stdout[-2000:] if result.returncode not in (0, 5) else ""}


def run_training_bench(out: Path, shape: dict) -> list[dict]:
    report = out / "gpu_train.json"
    subprocess.run([sys.executable, "bench/gpu_train.py", "--preset", shape["preset"], "--seq", str(shape["seq"]),
                    "--batch", str(shape["batch"]), "--steps", str(shape["steps"]), "--device", shape["device"],
                    "--kinds", "bf16,fp8,transformers", "--profile", "--json", str(report)], cwd=REPO, check=False)
    return json.loads(report.read_text()) if report.exists() else [{"kind": "all", "error": "gpu_train.py wrote nothing"}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--dry-run", action="store_true", help="nano on the CPU: the plumbing, not the figures")
    parser.add_argument("--test-timeout", type=int, default=300, help="seconds for any one GPU test")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shape = DRY if args.dry_run else FULL
    started = time.perf_counter()
    check = {"dry_run": args.dry_run, "environment": environment(), "shape": shape}
    if not args.dry_run and check["environment"]["gpu"] is None:
        print("gpu_check: no CUDA device here; --dry-run runs the plumbing on the CPU", file=sys.stderr)
        return 2
    check["tests"] = run_tests(args.out, args.test_timeout)
    check["train"] = run_training_bench(args.out, shape)
    check["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(check, indent=2))
    failed = [name for name, t in check["tests"]["tests"].items() if t["outcome"] == "failed"]
    broken = [r["kind"] for r in check["train"] if "error" in r and not (args.dry_run and r["kind"] == "fp8")]
    print(json.dumps({"failed_tests": failed, "broken_measurements": broken, "seconds": check["seconds"]}))
    return 1 if failed or broken or check["tests"]["exit_code"] not in (0, 5) else 0


if __name__ == "__main__":
    sys.exit(main())
