"""The model's own tokenizer: loaded from the model's directory (never downloaded), and, for the offline demo and the
tests, a small WordPiece tokenizer trained on local text and saved as a BERT tokenizer.

`AutoTokenizer.from_pretrained` on a directory without tokenizer files quietly builds an empty tokenizer from the
model's config (5 special tokens, every word unknown), so the files are checked first.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Files any `transformers` tokenizer is saved as (fast, WordPiece, BPE, SentencePiece)
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def load_tokenizer(directory: str | Path | None) -> Any:
    """The tokenizer saved in `directory` (with `save_pretrained`); one line when there is none or it cannot pad."""
    if directory is None or str(directory) in ("", "None"):
        raise ValueError(
            "text data is tokenised with the model's own tokenizer and none is set: pass model.pretrained=<model "
            "directory> (or data.tokenizer=<directory holding the tokenizer>)"
        )
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise ValueError(f"no tokenizer directory at {directory}: pass the model's save_pretrained directory")
    if not has_tokenizer(d):
        found = ", ".join(sorted(p.name for p in d.iterdir())) or "nothing"
        raise ValueError(
            f"no tokenizer in {directory} (found: {found}; a tokenizer is one of {', '.join(TOKENIZER_FILES[:4])}): "
            f"save the model's tokenizer there with tokenizer.save_pretrained('{directory}'), or set data.tokenizer"
        )
    import transformers

    from supernet.hf import quiet_transformers

    quiet_transformers()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"cannot load the tokenizer in {directory}: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        raise ValueError(
            f"the tokenizer in {directory} has no padding token: set one (tokenizer.pad_token = ...) and save it again"
        )
    return tok


def has_tokenizer(directory: str | Path) -> bool:
    """Whether `directory` holds a saved tokenizer."""
    d = Path(directory).expanduser()
    return d.is_dir() and any((d / f).is_file() for f in TOKENIZER_FILES)


def train_wordpiece(texts: Iterable[str], out: str | Path, vocab_size: int = 4096, min_frequency: int = 2) -> Any:
    """A lower-casing WordPiece tokenizer (BERT's special tokens, [PAD] = 0) trained on `texts` with the `tokenizers`
    library, saved in `out` as a BERT tokenizer; returns it loaded back from `out`."""
    import transformers
    from tokenizers.implementations import BertWordPieceTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                           show_progress=False)  # fmt: skip
    wp.save_model(str(out))  # vocab.txt
    transformers.BertTokenizer(vocab=str(out / "vocab.txt"), do_lower_case=True).save_pretrained(str(out))
    return load_tokenizer(out)
