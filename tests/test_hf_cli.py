"""`nas-train model=hf` and `nas-export` on a real (tiny) pretrained ViT: trained on digits with nas-hf-pretrain and
saved with save_pretrained, then imported, fine-tuned elastically from the frozen pretrained teacher, resumed, and
exported back to a Hugging Face directory."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

transformers = pytest.importorskip("transformers")

from export.cli import CONF_DIR as EXPORT_CONF  # noqa: E402
from export.cli import export_run  # noqa: E402
from predictors.fit_cli import fit_run  # noqa: E402
from predictors.measure_cli import measure_run  # noqa: E402
from search.cli import build_search  # noqa: E402
from supernet.artifact import load_supernet  # noqa: E402
from supernet.data import DigitsDataModule, ShakespeareGenreDataModule  # noqa: E402
from supernet.data.tokenizer import load_tokenizer  # noqa: E402
from supernet.extract import extract_subnet  # noqa: E402
from supernet.hf.load import describe, load_pretrained  # noqa: E402
from supernet.hf.prepare import check_data, prepare_pretrained  # noqa: E402
from supernet.hf.pretrain import pretrain  # noqa: E402
from supernet.hf.save import hf_logits  # noqa: E402
from supernet.subnet_io import load_subnet  # noqa: E402
from supernet.tolerance import RTOL, relative_error  # noqa: E402
from supernet.train_cli import train  # noqa: E402
from supernet.training import task_loss  # noqa: E402
from tests.test_search import MEASURE_OVERRIDES  # noqa: E402
from tests.test_training import make_cfg  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 3-layer ViT (hidden 32, 2 heads) trained 10 epochs on digits (about 70 % test accuracy, 7 s) and saved with
    save_pretrained."""
    out = tmp_path_factory.mktemp("hf") / "vit"
    args = argparse.Namespace(family="vit", task="digits", out=str(out), epochs=10, batch_size=32, lr=3e-3,
                              train_subset=None, limit_train_batches=1.0, limit_eval_batches=1.0, patch_size=2, seed=0,
                              hidden=32, layers=3, heads=2, ffn=64)  # fmt: skip
    record = pretrain(args)
    assert record["test"]["test/acc"] > 30  # it learned something: a real pretrained model, not random weights
    return out


def digits_batches(n: int = 2):
    dm = DigitsDataModule(batch_size=64)
    dm.setup()
    it = iter(dm.train_dataloader())
    return dm, [next(it) for _ in range(n)]


def hf_train_cfg(pretrained, *overrides: str):
    return make_cfg("experiment=hf_smoke", f"model.pretrained={pretrained}", "trainer.enable_progress_bar=false",
                    "trainer.limit_train_batches=3", "data.val_subset_size=64", *overrides)  # fmt: skip


def test_import_reorders_and_ranks_on_the_data_without_changing_the_model(pretrained) -> None:
    dm, batches = digits_batches()
    cfg = {"pretrained": str(pretrained), "importance": "taylor", "importance_batches": 2, "depth_drop": "importance"}
    space = {"from_pretrained": True, "name": "hf", "w_bits": [2, 8, 32], "a_bits": [32]}
    prep = prepare_pretrained(cfg, space, dm.input_spec(), lambda: iter(batches), task_loss)
    hf = load_pretrained(str(pretrained))
    x = batches[0][0]
    ref = hf_logits(hf, x)
    with torch.no_grad():
        out = prep.net(x, prep.net.space.largest())
    assert relative_error(out, ref) <= RTOL
    rank = prep.info["layer_rank"]
    assert sorted(rank) == [0, 1, 2] and prep.net.config.layer_rank == tuple(rank)
    assert len(prep.info["layer_redundancy"]) == 3 and prep.info["importance"] == "taylor"
    # A shallower subnet runs the best-ranked layers, and extraction still reproduces it exactly.
    rng = np.random.default_rng(0)
    for _ in range(8):
        arch = prep.net.space.sample(rng)
        with torch.no_grad():
            assert torch.equal(extract_subnet(prep.net, arch)(x), prep.net(x, arch))


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):
    """A run fine-tuned for one epoch from the pretrained teacher, then resumed for a second: (run, both summaries)."""
    run = tmp_path_factory.mktemp("hf_run") / "run"
    first = train(hf_train_cfg(pretrained), run)
    second = train(hf_train_cfg(pretrained, "trainer.max_epochs=2"), run)  # a resumed run rebuilds the same import
    return run, first, second


def test_fine_tunes_from_the_pretrained_teacher_resumes_and_exports_back(pretrained, finetuned, tmp_path) -> None:
    run, first, second = finetuned
    assert first["pretrained"]["family"] == "ViTForImageClassification"
    assert first["pretrained"]["source"] == str(pretrained)
    assert second["resumed_from"].endswith("last.ckpt") and second["global_step"] == 6
    net, info = load_supernet(run)
    assert net.config.cls_token and net.config.pooling == "cls" and info["pretrained"]["config"]["hidden_size"] == 32

    arch_file = tmp_path / "arch.yaml"
    big = net.space.largest()
    type(big)(2, big.embed_dim, (1, 2), (big.mlp_ratio[0],) * 2, (8, 32), 32).to_yaml(arch_file)
    with initialize_config_dir(config_dir=EXPORT_CONF, version_base=None):
        cfg = compose(config_name="export", overrides=[f"run={run}", f"arch={arch_file}", "hf_pad=true",
                                                       *MEASURE_OVERRIDES])  # fmt: skip
    out = export_run(cfg)
    hf_info = yaml.safe_load((out / "arch.yaml").read_text())["hugging_face"]
    assert hf_info["written"] and hf_info["padded"] and hf_info["passed"]
    back = load_pretrained(str(out / "hf"))
    sub = load_subnet(out)
    x = digits_batches(1)[1][0][0]
    with torch.no_grad():
        assert relative_error(hf_logits(back, x), sub(x)) <= RTOL
    assert "Hugging Face: ViTForImageClassification directory hf/" in (out / "report.md").read_text()


def test_export_without_padding_says_why_in_one_line(finetuned, tmp_path, capsys) -> None:
    run = finetuned[0]
    net, _ = load_supernet(run)
    arch_file = tmp_path / "arch.yaml"
    big = net.space.largest()
    type(big)(2, big.embed_dim, (1, 2), (big.mlp_ratio[0],) * 2, (32, 32), 32).to_yaml(arch_file)
    with initialize_config_dir(config_dir=EXPORT_CONF, version_base=None):
        overrides = [f"run={run}", f"arch={arch_file}", "name=unpadded", *MEASURE_OVERRIDES]
        cfg = compose(config_name="export", overrides=overrides)
    out = export_run(cfg)
    assert not (out / "hf").exists()
    printed = capsys.readouterr().out
    assert "no Hugging Face directory: ViTForImageClassification's config has one head count" in printed
    assert "wrote this project's model.safetensors and model.onnx instead" in printed


def test_data_that_does_not_fit_the_model_is_refused(pretrained) -> None:
    _, mc, _ = describe(load_pretrained(str(pretrained)))
    spec = {"task": "image", "in_channels": 1, "image_size": 28, "num_classes": 10}
    with pytest.raises(ValueError, match=r"takes 1×8×8 images in 10 classes, the data has 1×28×28 in 10"):
        check_data(mc, spec, "vit")
    with pytest.raises(ValueError, match=r"is a 'image' model but the data's task is 'lm'"):
        check_data(mc, {"task": "lm", "vocab_size": 256, "block_size": 8}, "vit")
    lm = type(mc)(task="lm", vocab_size=50257, block_size=1024)
    with pytest.raises(ValueError, match=r"tokenizer/vocabulary mismatch: the data's token ids come from a vocabulary "
                                         r"of 256, gpt2 has 50257 embeddings"):  # fmt: skip
        check_data(lm, {"task": "lm", "vocab_size": 256, "block_size": 64}, "gpt2")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=hf", "space=hf"], r"model=hf needs model.pretrained=<directory written by save_pretrained"),
        (["space=hf"], "space=hf is derived from a pretrained model: use it with model=hf"),
        (["train.teacher=pretrained"], "train.teacher=pretrained needs a pretrained model: nas-train model=hf"),
    ],
)
def test_hf_settings_without_a_pretrained_model(overrides, message, tmp_path) -> None:
    """(The CLI's one-line form of these errors is tested with the other nas-train inputs in test_training.py.)"""
    with pytest.raises(ValueError, match=message):
        train(make_cfg("experiment=smoke", *overrides), tmp_path / "x")


def test_a_model_option_that_contradicts_the_pretrained_config(pretrained, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"model.head_dim=8 contradicts .* \(16\); remove it"):
        train(hf_train_cfg(pretrained, "+model.head_dim=8"), tmp_path / "x")


def test_a_pretrained_llama_on_shakespeare_fine_tunes_and_exports_back(tmp_path) -> None:
    """The language-model path: a byte-level Llama (RMSNorm, RoPE, SwiGLU, grouped-query attention) pretrained a few
    steps on Shakespeare, fine-tuned elastically from itself as the teacher, and written back as a LlamaForCausalLM."""
    pre = tmp_path / "llama"
    args = argparse.Namespace(family="llama", task="shakespeare", out=str(pre), epochs=1, batch_size=32, lr=3e-3,
                              train_subset=None, limit_train_batches=8, limit_eval_batches=2, patch_size=1, seed=0,
                              hidden=32, layers=2, heads=4, ffn=48)  # fmt: skip
    assert pretrain(args)["family"] == "LlamaForCausalLM"
    run = tmp_path / "run"
    cfg = make_cfg("model=hf", "space=hf", "task=shakespeare", f"model.pretrained={pre}", "train.teacher=pretrained",
                   "model.block_size=32", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                   "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "data.val_subset_size=32",
                   "space.w_bits=[4,32]")  # fmt: skip
    summary = train(cfg, run)
    assert summary["pretrained"]["family"] == "LlamaForCausalLM" and summary["global_step"] == 2
    net, _ = load_supernet(run)
    assert net.config.kv_group == 2 and net.config.positions == "rope" and net.config.norm == "rms"
    assert net.config.block_size == 32  # costs and runtime graph: the data length, not the 64 positions
    arch_file = tmp_path / "arch.yaml"
    big = net.space.largest()
    type(big)(1, big.embed_dim, (2,), big.mlp_ratio[:1], (4,), 32).to_yaml(arch_file)
    with initialize_config_dir(config_dir=EXPORT_CONF, version_base=None):
        overrides = [f"run={run}", f"arch={arch_file}", "verify.batch=8", "data_overrides.val_subset_size=16"]
        ecfg = compose(config_name="export", overrides=[*overrides, *MEASURE_OVERRIDES])
    out = export_run(ecfg)
    back = load_pretrained(str(out / "hf"))
    assert back.config.num_hidden_layers == 1 and back.config.num_key_value_heads == 1
    x = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        assert relative_error(hf_logits(back, x), load_subnet(out)(x)) <= RTOL


# ---- text classification: a pretrained BERT with its own tokenizer --------------------------------------------------

GENRE = ["task=shakespeare_genre", "model.block_size=32", "data.batch_size=32"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A 2-layer BERT (hidden 32) with a 1,000-token WordPiece tokenizer trained on the genre task's training works,
    pretrained 300 steps on it (about 40 % on 3 classes, 8 s) and saved with save_pretrained."""
    out = tmp_path_factory.mktemp("hf") / "bert"
    args = argparse.Namespace(family="bert", task="shakespeare_genre", out=str(out), epochs=1, batch_size=32, lr=3e-3,
                              train_subset=None, limit_train_batches=300, limit_eval_batches=4, patch_size=1, seed=0,
                              hidden=32, layers=2, heads=2, ffn=64, block_size=32, vocab_size=1000)  # fmt: skip
    record = pretrain(args)
    assert record["family"] == "BertForSequenceClassification"
    assert record["preprocessing"]["classes"] == ["comedy", "history", "tragedy"]
    return out


def test_a_pretrained_bert_on_labelled_text_goes_from_nas_train_to_export(bert, tmp_path) -> None:
    """nas-train (the tokenizer from the model's directory, padding masked), nas-measure, nas-fit, nas-search and
    nas-export of the knee, written back as a BertForSequenceClassification equal to the subnet on padded text."""
    run = tmp_path / "run"
    # Full width: BertConfig derives head_dim from hidden / heads, so every knee has a (padded) BERT form.
    cfg = make_cfg("model=hf", "space=hf", *GENRE, f"model.pretrained={bert}", "train.teacher=pretrained",
                   "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                   "trainer.enable_progress_bar=false", "data.val_subset_size=64", "space.w_bits=[4,32]",
                   "space.embed_fraction=[1.0]")  # fmt: skip
    summary = train(cfg, run)
    assert summary["pretrained"]["family"] == "BertForSequenceClassification" and summary["global_step"] == 2
    net, info = load_supernet(run)
    assert net.config.task == "text" and net.config.pad_id == 0 and net.config.block_size == 32
    assert info["data"]["preprocessing"]["tokenizer"] == str(bert)

    with initialize_config_dir(config_dir=EXPORT_CONF, version_base=None):
        measure = ["n_archs=30", "holdout_fraction=0.4", *MEASURE_OVERRIDES]
        table = measure_run(compose(config_name="measure", overrides=[f"run={run}", *measure]))
        fit_run(compose(config_name="measure", overrides=[f"run={run}", *measure, "fit.k_folds=2"]))
        search = [f"run={run}", *MEASURE_OVERRIDES, f"init_from={table}", "search.budget=8", "search.initial=8",
                  "search.batch_size=2", "search.n_candidates=200", "search.predictor.candidates=[ridge]",
                  "search.predictor.k_folds=2"]  # fmt: skip
        build_search(compose(config_name="search", overrides=search)).run()
        ecfg = compose(config_name="export", overrides=[f"run={run}", "select=knee", "hf_pad=true", "verify.batch=16",
                                                        *MEASURE_OVERRIDES])  # fmt: skip
    accuracies = {round(float(line.split(",")[3]), 3) for line in table.read_text().splitlines()[1:]}
    assert len(accuracies) > 1  # the archs really differ
    out = export_run(ecfg)
    record = yaml.safe_load((out / "arch.yaml").read_text())
    assert record["hugging_face"]["written"] and record["hugging_face"]["passed"]
    back = load_pretrained(str(out / "hf"))
    assert type(back).__name__ == "BertForSequenceClassification" and back.config.pad_token_id == 0
    assert len(load_tokenizer(out / "hf")) == len(load_tokenizer(bert))  # the directory is complete
    dm = ShakespeareGenreDataModule(tokenizer=str(bert), block_size=32, val_subset_size=16)
    x = next(iter(dm.val_subset_dataloader()))[0]
    assert (x == 0).any()  # padded passages
    with torch.no_grad():
        assert relative_error(hf_logits(back, x), load_subnet(out)(x)) <= RTOL


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.block_size=64"], r"data.block_size=64 is longer than the 32 positions of .*bert; lower"),
        (["data.poems=true"], r"data.classes \['comedy', 'history', 'tragedy', 'poetry'\] are not the model's classes"),
        (["data.tokenizer=NOTOKENIZER"], r"no tokenizer in .* \(found: config.json, model.safetensors, pretrain.json;"),
    ],
)
def test_text_data_that_does_not_fit_the_bert_is_one_line(bert, tmp_path, overrides, message) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "pretrain.json"):
        (bare / name).write_bytes((bert / name).read_bytes())
    overrides = [o.replace("NOTOKENIZER", str(bare)) for o in overrides]
    cfg = make_cfg("model=hf", "space=hf", *GENRE, f"model.pretrained={bert}", *overrides)
    with pytest.raises(ValueError, match=message) as e:
        train(cfg, tmp_path / "run")
    assert "\n" not in str(e.value)


def test_text_task_without_a_pretrained_model_is_one_line(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"tokenised with the model's own tokenizer and none is set: pass model.pre"):
        train(make_cfg(*GENRE), tmp_path / "run")


def test_bench_hf_inherited_smoke(pretrained, finetuned) -> None:
    """bench/hf_inherited.py's smoke mode on the fine-tuned run, after a short search gives it a front to read."""
    from search.cli import CONF_DIR as SEARCH_CONF
    from search.cli import build_search
    from tests.bench_smoke import run_script, unchanged_results

    run, _, _ = finetuned
    overrides = [f"run={run}", *MEASURE_OVERRIDES, "search.budget=9", "search.initial=7", "search.batch_size=2",
                 "search.n_candidates=200", "search.pop_size=10", "search.predictor.candidates=[ridge]",
                 "search.predictor.k_folds=2"]  # fmt: skip
    with initialize_config_dir(config_dir=SEARCH_CONF, version_base=None):
        build_search(compose(config_name="search", overrides=overrides)).run()
    with unchanged_results():
        out = run_script("hf_inherited.py", "--run", str(run), "--pretrained", str(pretrained), "--smoke")
    assert re.search(r"pretrained ViTForImageClassification from .*: test accuracy [\d.]+ %", out), out
    assert "largest arch after elastic fine-tuning: test" in out


def test_model_hf_defaults_to_the_models_own_space() -> None:
    """`nas-train model=hf model.pretrained=<dir>` needs no `space=hf`: the model's own space is model=hf's default,
    and a space named on the command line still wins."""
    assert make_cfg("model=hf", "model.pretrained=somewhere").space.from_pretrained is True
    assert make_cfg("model=hf", "space=small").space.name == "small"
    assert make_cfg().space.name == "default"  # the project's own models keep theirs
