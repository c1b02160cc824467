"""Safety evaluations of herd's models and of any OpenAI-compatible chat endpoint.

CyberSecEval (Meta PurpleLlama's benchmarks, read in their own file formats):

    chat.py          the ChatModel interface: herd checkpoints and OpenAI-compatible endpoints
    refusal.py       the refusal keyword detector (MITRE false-refusal rate)
    judges.py        what the judge is asked, and how its answers are read
    insecure_code.py Meta's Insecure Code Detector (codeshield) on the answers' code
    benchmarks.py    per benchmark: prompt, scoring, PurpleLlama's statistics
    report.py        per-category tables and the files a run writes
    cyberseceval.py  run_cyberseceval(): one benchmark end to end (what the safety stage calls)
    cli.py           ``herd safety cyberseceval ...``, ``herd safety goat ...``

GOAT and the stage:

    goat/            the GOAT attacker (7 techniques, O/T/S/R turns, template fallback), judges, ASR@k
    stage.py         stage ``safety``: CyberSecEval + GOAT for one variant's final model, judged with the
                     guards of stage ``guards`` (:mod:`tasks.guards`)

The benchmark files' readers and the technique library, which the guards read too, are in
:mod:`tasks.redteam`.
"""
