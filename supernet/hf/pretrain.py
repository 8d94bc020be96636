"""`nas-hf-pretrain`: train a small Hugging Face model normally on one of this project's datasets and save it with
`save_pretrained`: the "pretrained model" of the offline import demo (a user brings their own instead).

    nas-hf-pretrain --family vit --out results/hf_pretrained            # ViT on Fashion-MNIST
    nas-hf-pretrain --family llama --task shakespeare --out results/hf_llama
    nas-hf-pretrain --family bert --task shakespeare_genre --out results/hf_bert   # + its WordPiece tokenizer

It trains with Lightning (AdamW, warmup + cosine) on the task's training split, reports the validation and test
metrics, and writes the model directory plus `pretrain.json`. A finished directory is not trained again. For text
classification it first trains a WordPiece tokenizer on the training split (`--vocab-size` tokens) and saves it in
the same directory, where `nas-train model=hf` finds it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from supernet.hf import quiet_transformers
from supernet.hf.save import hf_forward
from supernet.training import build_optimizer, eval_metrics, task_loss

SIZES = {"hidden": 128, "layers": 4, "heads": 4, "ffn": 512}


def hf_config(family: str, spec: dict[str, Any], s: dict[str, int], patch_size: int):
    """A `transformers` config of `family` fitted to the data spec."""
    import transformers

    if family == "vit":
        return transformers.ViTConfig(
            hidden_size=s["hidden"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            intermediate_size=s["ffn"],
            image_size=spec["image_size"],
            patch_size=patch_size,
            num_channels=spec["in_channels"],
            num_labels=spec["num_classes"],
            architectures=["ViTForImageClassification"],
        )
    if family == "bert":
        return transformers.BertConfig(
            vocab_size=spec["vocab_size"],
            hidden_size=s["hidden"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            intermediate_size=s["ffn"],
            max_position_embeddings=spec["block_size"],
            num_labels=spec["num_classes"],
            pad_token_id=spec["pad_id"],
            architectures=["BertForSequenceClassification"],
        )
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=spec["vocab_size"],
            n_embd=s["hidden"],
            n_layer=s["layers"],
            n_head=s["heads"],
            n_inner=s["ffn"],
            n_positions=spec["block_size"],
            bos_token_id=0,
            eos_token_id=0,
            architectures=["GPT2LMHeadModel"],
        )
    if family == "llama":
        return transformers.LlamaConfig(
            vocab_size=spec["vocab_size"],
            hidden_size=s["hidden"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            num_key_value_heads=max(1, s["heads"] // 2),
            intermediate_size=s["ffn"],
            max_position_embeddings=spec["block_size"],
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=None,
            architectures=["LlamaForCausalLM"],
        )
    raise ValueError(f"--family {family!r} is not one of ['vit', 'bert', 'gpt2', 'llama']")


class HFModule(L.LightningModule):
    """A `transformers` model trained with this project's loss, optimizer and schedule."""

    def __init__(self, model: torch.nn.Module, train: dict[str, Any], metric: str) -> None:
        super().__init__()
        self.model, self.cfg, self.metric = model, train, metric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hf_forward(self.model, x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = task_loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        for k, v in eval_metrics(self(x), y, self.metric).items():
            self.log(f"val/{k}", v, batch_size=y.numel(), prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        for k, v in eval_metrics(self(x), y, self.metric).items():
            self.log(f"test/{k}", v, batch_size=y.numel())

    def configure_optimizers(self):
        return build_optimizer(self.model, self.cfg, int(self.trainer.estimated_stepping_batches))


TASKS = ("fashion_mnist", "digits", "shakespeare", "shakespeare_genre")


def build_data(args: argparse.Namespace, out: Path):
    """The task's data module; for text classification after training its tokenizer into `out`."""
    from supernet.data import (
        DigitsDataModule,
        FashionMNISTDataModule,
        ShakespeareDataModule,
        ShakespeareGenreDataModule,
    )

    block_size = getattr(args, "block_size", 64)  # (argparse namespaces written before these options)
    if args.task == "fashion_mnist":
        return FashionMNISTDataModule(batch_size=args.batch_size, train_subset=args.train_subset)
    if args.task == "digits":
        return DigitsDataModule(batch_size=args.batch_size, train_subset=args.train_subset)
    if args.task == "shakespeare":
        return ShakespeareDataModule(batch_size=args.batch_size, block_size=block_size)
    if args.task == "shakespeare_genre":
        if args.family != "bert":
            raise ValueError(f"--task shakespeare_genre classifies text: use --family bert, not {args.family!r}")
        from supernet.data.labelled import read_labelled
        from supernet.data.tokenizer import train_wordpiece

        dm = ShakespeareGenreDataModule(tokenizer=str(out), block_size=block_size, batch_size=args.batch_size)
        texts = (text for text, _ in read_labelled(dm.files()["train"]))  # the training works only
        train_wordpiece(texts, out, getattr(args, "vocab_size", 4096))
        return dm
    raise ValueError(f"--task {args.task!r} is not one of {list(TASKS)}")


def pretrain(args: argparse.Namespace) -> dict[str, Any]:
    """Train and save; returns what `pretrain.json` records."""
    import transformers

    quiet_transformers()
    out = Path(args.out)
    if (out / "pretrain.json").is_file():
        print(f"nas-hf-pretrain: {out} is already trained (delete it to train again)")
        return json.loads((out / "pretrain.json").read_text())
    L.seed_everything(args.seed, verbose=False)
    dm = build_data(args, out)
    spec = dm.input_spec()
    sizes = {k: getattr(args, k) for k in SIZES}
    cfg = hf_config(args.family, spec, sizes, args.patch_size)
    if getattr(dm, "classes", None):  # named labels: what the data module maps label names to
        cfg.id2label = dict(enumerate(dm.classes))
        cfg.label2id = {c: i for i, c in enumerate(dm.classes)}
    model = getattr(transformers, cfg.architectures[0])(cfg)
    metric = "loss" if spec["task"] == "lm" else "acc"
    schedule = {"lr": args.lr, "weight_decay": 0.05, "warmup_fraction": 0.1, "min_lr_ratio": 0.01}
    module = HFModule(model, schedule, metric)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        limit_train_batches=args.limit_train_batches,
        limit_val_batches=args.limit_eval_batches,
        limit_test_batches=args.limit_eval_batches,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - t0
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    test = {k: float(v) for k, v in trainer.test(module, datamodule=dm, verbose=False)[0].items()}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    record = {
        "family": cfg.architectures[0],
        "task": args.task,
        "sizes": sizes,
        "epochs": args.epochs,
        "train_seconds": round(seconds, 1),
        "val": val,
        "test": test,
        "preprocessing": dm.preprocessing(),
    }
    (out / "pretrain.json").write_text(json.dumps(record, indent=2))
    print(
        f"nas-hf-pretrain: {cfg.architectures[0]} trained {args.epochs} epoch(s) in {seconds:.0f} s; validation "
        f"{val}, test {test}; saved to {out}"
    )
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="nas-hf-pretrain", description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="vit", help="vit | bert | gpt2 | llama")
    ap.add_argument("--task", default="fashion_mnist", help=" | ".join(TASKS))
    ap.add_argument("--out", required=True, help="directory to save_pretrained into")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--train-subset", type=int, default=None)
    ap.add_argument("--limit-train-batches", type=float, default=1.0, help="a fraction, or (> 1) a batch count")
    ap.add_argument("--limit-eval-batches", type=float, default=1.0, help="validation and test batches, as above")
    ap.add_argument("--patch-size", type=int, default=7)
    ap.add_argument("--block-size", type=int, default=64, help="tokens per sequence (text tasks)")
    ap.add_argument("--vocab-size", type=int, default=4096, help="WordPiece vocabulary (text classification)")
    ap.add_argument("--seed", type=int, default=0)
    for k, v in SIZES.items():
        ap.add_argument(f"--{k}", type=int, default=v)
    args = ap.parse_args(argv)
    for name in ("limit_train_batches", "limit_eval_batches"):  # Lightning: a float is a fraction, an int a count
        v = getattr(args, name)
        setattr(args, name, int(v) if v > 1 else v)
    try:
        pretrain(args)
    except ValueError as e:
        print(f"nas-hf-pretrain: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
