"""herd's compute side: one package per stage, each run as a process by ``tasks.cli``."""
