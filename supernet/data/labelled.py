"""Labelled text for sequence classification (task "text"): CSV or JSON-lines files with a text and a label field,
tokenised with the model's own tokenizer (supernet/data/tokenizer.py).

Each text becomes `block_size` token ids: truncated, then padded on the right with the tokenizer's padding id. The
attention mask is that id's complement (`ids != pad_id`): the model derives it from the ids (`model.pad_id`), so a
batch stays one tensor through training, measurement, export and ONNX Runtime. A label is a class name or a class
index. The classes are, in this order: `classes` if given, else the model's named labels (`id2label` in the
tokenizer directory's config.json), else the training file's label names sorted; integer labels index the model's
`num_labels` classes. Validation and test files are optional: missing ones are held out of the training file
(seeded by `split_seed`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from supernet.data.base import TaskDataModule
from supernet.data.tokenizer import load_tokenizer

Rows = list[tuple[str, Any]]  # (text, label) with the label as read: a name or an int


def read_labelled(path: str | Path, text_field: str = "text", label_field: str = "label") -> Rows:
    """(text, label) rows of a `.csv` (header row) or `.jsonl` / `.json` (one object per line) file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no labelled text file at {path}: pass a CSV or JSON-lines file with '{text_field}' and "
                         f"'{label_field}' fields")  # fmt: skip
    fields = (text_field, label_field)
    if p.suffix.lower() == ".csv":
        with p.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [k for k in fields if k not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(
                    f"{path} has no column {missing[0]!r} (columns: {', '.join(reader.fieldnames or []) or 'none'}); "
                    f"set data.text_field / data.label_field"
                )
            return [(r[text_field], r[label_field]) for r in reader]
    if p.suffix.lower() not in (".jsonl", ".json"):
        raise ValueError(f"{path}: labelled text must be .csv or .jsonl (one JSON object per line)")
    rows = []
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            missing = [k for k in fields if k not in obj]
            if missing:
                raise ValueError(
                    f"{path} line {n} has no field {missing[0]!r} (fields: {', '.join(obj)}); "
                    "set data.text_field / data.label_field"
                )
            rows.append((obj[text_field], obj[label_field]))
    return rows


def model_labels(directory: str | Path | None) -> tuple[list[str] | None, int | None]:
    """(named classes or None, number of classes or None) of the model saved in `directory` (its config.json)."""
    cfg_file = Path(directory) / "config.json" if directory else None
    if cfg_file is None or not cfg_file.is_file():
        return None, None
    cfg = json.loads(cfg_file.read_text())
    id2label = cfg.get("id2label") or {}
    n = len(id2label) or cfg.get("num_labels")
    names = [str(id2label[str(i)]) for i in range(len(id2label))] if id2label else []
    if not names or names == [f"LABEL_{i}" for i in range(len(names))]:  # transformers' defaults: not names
        return None, n
    return names, n


def _as_index(label: Any) -> int | None:
    if isinstance(label, bool):
        return None
    if isinstance(label, int):
        return label
    return int(label) if isinstance(label, str) and label.strip().lstrip("-").isdigit() else None


def label_ids(rows: Rows, classes: Sequence[str] | None, num_classes: int, source: str) -> torch.Tensor:
    """Class indices of the rows' labels; one line naming a label outside the classes."""
    index = {c: i for i, c in enumerate(classes or [])}
    out = []
    for n, (_, label) in enumerate(rows, 1):
        i = index.get(label) if isinstance(label, str) else None
        i = _as_index(label) if i is None else i
        if i is None or not 0 <= i < num_classes:
            named = f"the classes {list(classes)}" if classes else f"the {num_classes} classes 0..{num_classes - 1}"
            raise ValueError(f"label {label!r} ({source}, row {n}) is not one of {named}; fix the file or data.classes")
        out.append(i)
    return torch.tensor(out, dtype=torch.long)


def tokenize(tokenizer: Any, texts: Sequence[str], block_size: int, source: str) -> torch.Tensor:
    """(N, block_size) ids: truncated, right-padded with the tokenizer's padding id, which marks padding only."""
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=block_size, return_tensors="pt")
    ids = enc["input_ids"].long()
    real = enc["attention_mask"].bool()
    if not torch.equal(real, ids != tokenizer.pad_token_id):
        row = int((real != (ids != tokenizer.pad_token_id)).any(1).nonzero()[0])
        raise ValueError(
            f"{source}, row {row + 1}: the text holds the padding token {tokenizer.pad_token!r}, which the model masks "
            "out; remove it from the text"
        )
    return ids


def _holdout(rows: Rows, fraction: float, rng: np.random.Generator) -> tuple[Rows, Rows]:
    """(kept, held out): a seeded `fraction` of the rows held out."""
    order = rng.permutation(len(rows))
    n = round(fraction * len(rows))
    held = set(order[:n].tolist())
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


class LabelledTextDataModule(TaskDataModule):
    """Text classification data from labelled CSV / JSON-lines files, tokenised with the model's tokenizer."""

    def __init__(
        self,
        train_file: str | None = None,
        tokenizer: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        block_size: int = 128,
        text_field: str = "text",
        label_field: str = "label",
        classes: Sequence[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 32,
        val_subset_size: int = 512,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        split_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, val_subset_size, num_workers, seed, split_seed)
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 2:
            raise ValueError(f"data.block_size={block_size!r} must be an integer >= 2 (a class token and a word)")
        self.train_file, self.val_file, self.test_file = train_file, val_file, test_file
        self.tokenizer_dir, self.block_size = tokenizer, block_size
        self.text_field, self.label_field = text_field, label_field
        self.classes = list(classes) if classes else None
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.num_classes: int | None = None
        self.pad_id: int | None = None
        self.vocab_size: int | None = None

    def files(self) -> dict[str, str | None]:
        """{split: file}; subclasses may write them first."""
        if not self.train_file:
            raise ValueError("data.train_file is not set: a CSV or JSON-lines file with text and label fields")
        return {"train": self.train_file, "val": self.val_file, "test": self.test_file}

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        tok = load_tokenizer(self.tokenizer_dir)
        files = self.files()
        rows = {s: read_labelled(f, self.text_field, self.label_field) for s, f in files.items() if f}
        rng = np.random.default_rng(self.split_seed)
        for split, fraction in (("val", self.val_fraction), ("test", self.test_fraction)):
            if split not in rows:
                rows["train"], rows[split] = _holdout(rows["train"], fraction, rng)
        self._resolve_classes(rows["train"])
        source = {s: files[s] or f"{files['train']} (held out)" for s in files}
        data = {}
        for split, r in rows.items():
            ids = tokenize(tok, [text for text, _ in r], self.block_size, source[split])
            data[split] = TensorDataset(ids, label_ids(r, self.classes, self.num_classes, source[split]))
        self.pad_id, self.vocab_size = int(tok.pad_token_id), len(tok)
        self.train, self.val, self.test = data["train"], data["val"], data["test"]

    def _resolve_classes(self, train_rows: Rows) -> None:
        """Class names and count: given, the model's named labels, or the training labels' names sorted."""
        named, n = model_labels(self.tokenizer_dir)
        if self.classes and named and self.classes != named:
            raise ValueError(
                f"data.classes {self.classes} are not the model's classes {named} (config.json id2label) in that "
                "order; list them in the model's order"
            )
        self.classes = self.classes or named
        if self.classes is None and not all(_as_index(label) is not None for _, label in train_rows):
            self.classes = sorted({str(label) for _, label in train_rows})
        if self.classes is not None:
            self.num_classes = len(self.classes)
        else:  # integer labels: the model's classes, else as many as the largest label says
            self.num_classes = n or max(_as_index(label) for _, label in train_rows) + 1

    def input_spec(self) -> dict:
        self.setup()
        return {"task": "text", "vocab_size": self.vocab_size, "block_size": self.block_size,
                "num_classes": self.num_classes, "pad_id": self.pad_id}  # fmt: skip

    def preprocessing(self) -> dict:
        self.setup()
        return {
            "tokenizer": str(self.tokenizer_dir),
            "block_size": self.block_size,
            "padding": f"right, to block_size, with id {self.pad_id} (the model masks it)",
            "truncation": "to block_size tokens",
            "classes": self.classes,
            "files": {k: v for k, v in self.files().items() if v},
        }

    def val_subset_indices(self) -> list[int]:
        """Evenly spread validation rows (files are often sorted by source or label)."""
        idx = np.linspace(0, len(self.val) - 1, min(self.val_subset_size, len(self.val))).round().astype(int)
        return sorted(set(idx.tolist()))
