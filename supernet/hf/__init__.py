"""Hugging Face models in and out: import a pretrained ViT, BERT, GPT-2 or Llama as an elastic supernet
(`load.py`, with the family mappings in `families.py`), and write a subnet back as a `transformers` model
directory (`save.py`). `transformers` is imported only when these are used."""


def quiet_transformers() -> None:
    """No progress bars or info lines from `transformers` in this project's output (they would drown its one-line
    reports); warnings and errors still show."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
