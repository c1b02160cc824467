"""The Llama 4 text model: ``llama4.py`` (the math), ``hf.py`` (Hugging Face format)."""
