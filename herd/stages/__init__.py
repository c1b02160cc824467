"""One module per stage holding its typed config."""
