"""Stage midtrain: long-context continuation with needle-in-a-haystack data and retrieval heatmaps."""
