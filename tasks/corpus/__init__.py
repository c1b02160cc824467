"""Seed corpora that the project builds from packages, never from a download at run time."""
