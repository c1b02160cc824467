"""Post-training problems with checkable answers, built from what the project has (no downloads).

Capabilities: ``arithmetic``, ``strings``, ``code`` (generated) and ``translate``,
``language_id``, ``continue`` (the UDHR's aligned articles). Each item carries a checker
by name with its arguments (:mod:`checkers`), a difficulty for curricula, and renders in
Llama 4's chat format with the tokenizer stage's template (:mod:`chat`).
:func:`build.build_problem_sets` writes the train and eval sets.
"""
