"""Stage ``guards``: the two safety classifiers every variant's ``safety`` stage reads.

    data.py    the guards' training data, built from a seed
    model.py   the output guard (Llama-Guard-style) and the prompt guard (Prompt-Guard-style)
    loader.py  load_guards(): a guards stage output, as its readers load it
    stage.py   the stage: build the data, train both guards, measure them
"""
