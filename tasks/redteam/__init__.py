"""What the ``safety`` and ``guards`` stages both read; a library, not a stage.

    datasets.py    Meta PurpleLlama's CyberSecEval files: readers, and where each benchmark's file is in the
                   ``cyberseceval`` input (the safety stage's benchmarks, the guards' held-out sets)
    techniques.py  GOAT's seven jailbreak techniques (the attacker's library, the guards' training jailbreaks)
"""
