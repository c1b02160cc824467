"""Rollouts of a policy on problems, shared by the stages that sample and score completions (rl, dpo, sft's judge).

``groups``: prompts rendered as chat, groups of sampled completions with their log-probs and checker rewards,
and pass@k evaluation; ``passk``: the unbiased pass@k estimator.
"""
