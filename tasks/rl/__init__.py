"""Online RL with a pass@k curriculum (LLAMA4_SPEC §2.4-2.5, §4), our own loop rather than TRL's GRPOTrainer.

- :mod:`rollout`: problems to scored groups (chat rendering, checkers), sampled by
  :mod:`tasks.model.generate`, and :func:`rollout.evaluate`.
- :mod:`passk`: the unbiased pass@k estimator and the prompt pool (passk curriculum or uniform).
- :mod:`grpo`: group-normalised advantages, the clipped surrogate with a k3 KL, the AdamW update.
- :mod:`queue`: rollouts decoupled from training, in the same process or a spawned one.
- :mod:`loop`: :func:`loop.run_rl`, resumable every round.
- :mod:`ablation`: pass@k curriculum against uniform prompt sampling at equal rollouts, over seeds.
"""
