"""Where ``tasks/sft/sampling.py`` finds ``device_and_dtype`` until ``tasks/model/generate.py`` replaces it; the
training library is :mod:`tasks.training`."""

from tasks.training.precision import device_and_dtype

__all__ = ["device_and_dtype"]
