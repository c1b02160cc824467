"""Stage ``guards``: the two safety classifiers every variant's ``safety`` stage reads (models in :mod:`tasks.safety.guards`)."""
