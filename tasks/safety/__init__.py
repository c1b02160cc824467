"""Safety evaluations of herd's models and of any OpenAI-compatible chat endpoint.

CyberSecEval (Meta PurpleLlama's benchmarks, read in their own file formats):

    chat.py          the ChatModel interface: herd checkpoints and OpenAI-compatible endpoints
    datasets.py      readers for the five benchmark files; unusable records counted and skipped
    refusal.py       the refusal keyword detector (MITRE false-refusal rate)
    judges.py        what the judge is asked, and how its answers are read
    insecure_code.py Meta's Insecure Code Detector (codeshield) on the answers' code
    benchmarks.py    per benchmark: prompt, scoring, PurpleLlama's statistics
    report.py        per-category tables and the files a run writes
    cyberseceval.py  run_cyberseceval(): one benchmark end to end (what the safety stage calls)
    cli.py           ``herd safety cyberseceval ...``, ``herd safety goat ...``

GOAT, the guards, and the stage:

    goat.py          the GOAT attacker (7 techniques, O/T/S/R turns, template fallback), judges, ASR@k
    guard_data.py    the guards' training data, built from a seed
    guards.py        the output guard (Llama-Guard-style) and the prompt guard (Prompt-Guard-style)
    stage.py         stage ``safety``: CyberSecEval + GOAT for one variant's final model
                     (stage ``guards`` is :mod:`tasks.guards.stage`)
"""
