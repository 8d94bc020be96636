"""Shared fixtures: the registered task models, built once per session with non-trivial weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from supernet import ModelConfig, SearchSpace, Supernet, build_supernet

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "conf" / "space"

# Every task model the project ships. A new task added here is covered by every contract test automatically.
TASK_CONFIGS = {
    "image": ModelConfig(task="image"),
    "image_bit_norms": ModelConfig(task="image", bit_norms=True),  # the ViT as the demo trains it
    "lm": ModelConfig(task="lm", vocab_size=256, block_size=32),
    # The block options of the imported Hugging Face families (supernet/hf/), on this project's spaces (the ViT's
    # CLS token and pooling: tests/test_hf_cli.py extracts and exports random archs of an imported ViT):
    "text_bert": ModelConfig(
        task="text",
        vocab_size=256,
        block_size=32,
        num_classes=5,
        norm_position="post",
        pooling="cls",
        pooler=True,
        embed_norm=True,
        token_types=True,
        final_norm=False,
        pad_id=0,  # padded batches: sample_input right-pads every row to a random length
    ),  # BERT
    "lm_llama": ModelConfig(
        task="lm",
        vocab_size=256,
        block_size=32,
        norm="rms",
        activation="silu",
        gated_ffn=True,
        positions="rope",
        linear_bias=False,
        head_bias=False,
        depth_heads=True,  # an LM head per depth: the recipe option, on the LM path
        # Llama 3's RoPE scaling, with bands that fit 32 positions: wavelengths below 10 kept, 10-160 ramped, beyond
        # divided by 8 (head_dim 32 at theta 10,000 spans 6 to 40,000)
        rope_scaling="llama3",
        rope_factor=8.0,
        rope_high_freq_factor=16.0,
        rope_original_positions=160,
    ),  # Llama (GQA: tests/test_hf.py)
}


OWN_MODELS = ("image", "image_bit_norms", "lm")  # the project's own models; the rest are the imported families' options


def own_model(net: torch.nn.Module) -> bool:
    """Whether `net` is one of this project's own task models (not an imported family's option set)."""
    return any(net.config == TASK_CONFIGS[k] for k in OWN_MODELS)


def n_archs(net: torch.nn.Module, n: int) -> int:
    """How many random archs a contract test draws: `n` for the project's own models, a quarter (at least 10) for the
    imported families' option sets, whose exactness at every size tests/test_hf.py checks against transformers."""
    return n if own_model(net) else max(10, n // 4)


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for every parameter, layer norms and biases included (ones/zeros would hide slicing bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 1 else 0.1))
    return net


def sample_input(config: ModelConfig, batch: int = 4, seq_len: int | None = None, seed: int = 0) -> torch.Tensor:
    """A valid input batch for the task; with a `pad_id`, rows of random lengths (at least 1) padded on the right."""
    g = torch.Generator().manual_seed(seed)
    if config.task == "image":
        return torch.randn(batch, config.in_channels, config.image_size, config.image_size, generator=g)
    if config.pad_id is None:
        return torch.randint(0, config.vocab_size, (batch, seq_len or config.block_size), generator=g)
    return padded_tokens(config, batch, seq_len or config.block_size, g)


def padded_tokens(config: ModelConfig, batch: int, seq_len: int, g: torch.Generator) -> torch.Tensor:
    """(batch, seq_len) ids other than `config.pad_id`, each row cut to a random length >= 1 and padded with it."""
    ids = torch.randint(0, config.vocab_size - 1, (batch, seq_len), generator=g)
    ids += (ids >= config.pad_id).long()  # every id but the pad id
    lengths = torch.randint(1, seq_len + 1, (batch, 1), generator=g)
    lengths[0] = seq_len  # one full row
    return ids.masked_fill(torch.arange(seq_len) >= lengths, config.pad_id)


@pytest.fixture(scope="session")
def default_space() -> SearchSpace:
    return SearchSpace.from_yaml(SPACES / "default.yaml")


@pytest.fixture(scope="session")
def small_space() -> SearchSpace:
    return SearchSpace.from_yaml(SPACES / "small.yaml")


@pytest.fixture(scope="session", params=sorted(TASK_CONFIGS))
def task_net(request, default_space) -> Supernet:
    """A supernet of every registered task over the default space, random weights, eval mode."""
    torch.manual_seed(0)
    return randomize(build_supernet(default_space, TASK_CONFIGS[request.param])).eval()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Hundreds of tiny forwards: one intra-op thread is several times faster than two on a loaded 2-core machine.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def digits_net_and_batches(space: SearchSpace, val_subset_size: int) -> tuple[Supernet, list]:
    """A seeded 8x8 ViT supernet on `space` (eval mode) and the digits validation subset as fixed batches."""
    from predictors.measure import fixed_batches
    from supernet.data import DigitsDataModule

    torch.manual_seed(0)
    net = build_supernet(space, ModelConfig(task="image", image_size=8, patch_size=2)).eval()
    dm = DigitsDataModule(val_subset_size=val_subset_size)
    dm.setup()
    return net, fixed_batches(dm.val_subset_dataloader())


def kl_by_hand(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """The distillation loss written out, independently of supernet/training.py: per row (sample or token)
    Σ_c p_t(c) · (log p_t(c) − log p_s(c)) with p = softmax(logits / T), averaged over the rows, times T²."""
    s = student.reshape(-1, student.shape[-1]).double() / temperature
    t = teacher.reshape(-1, teacher.shape[-1]).double() / temperature
    log_ps, log_pt = s - s.logsumexp(-1, keepdim=True), t - t.logsumexp(-1, keepdim=True)
    return ((log_pt.exp() * (log_pt - log_ps)).sum(-1).mean() * temperature**2).float()


def ce_by_hand(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy written out: −log softmax(logits)[target], averaged over the rows."""
    z = logits.reshape(-1, logits.shape[-1]).double()
    log_p = z - z.logsumexp(-1, keepdim=True)
    return (-log_p.gather(1, target.reshape(-1, 1)).mean()).float()


def sandwich_module(space: SearchSpace, train: dict, seed: int):
    """A SupernetModule on `space` with a seeded 2-random sandwich sampler and logging switched off, for loss tests."""
    from supernet.sampling import build_sampler
    from supernet.training import SupernetModule

    module = SupernetModule(space.to_dict(), {"task": "image"}, train)
    module.sampler = build_sampler("sandwich", module.space, num_random=2, seed=seed)
    module.log = lambda *a, **k: None
    return module


# ---- real datasets a machine may lack ---------------------------------------------------------------------------

REQUIRE_DATA_ENV = "NAS_REQUIRE_DATA"  # set by .ci/run: there, a missing dataset fails its tests instead of skipping


def needs_data(available: bool, reason: str) -> pytest.MarkDecorator:
    """Skip a test whose real dataset is not on this machine (saying how to get it), except on CI
    (`NAS_REQUIRE_DATA=1`), where the dataset must be there and its absence fails the test."""
    if available:
        return pytest.mark.usefixtures()
    if os.environ.get(REQUIRE_DATA_ENV) == "1":
        return pytest.mark.missing_data(reason)
    return pytest.mark.skip(reason=reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    missing = item.get_closest_marker("missing_data")
    if missing is not None:
        pytest.fail(f"{REQUIRE_DATA_ENV}=1 and the data is missing: {missing.args[0]}", pytrace=False)


# ---- databases for the shared search study -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server for the session (tests/pgserver.py); skipped with a reason where Debian's
    postgresql is not installed, except on CI (`NAS_REQUIRE_POSTGRES=1`), where that is a failure."""
    import os

    from tests.pgserver import HOW_TO_GET, REQUIRE_ENV, PostgresServer, server_bin

    if server_bin() is None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but no PostgreSQL server is installed: {HOW_TO_GET}")
        pytest.skip(f"no PostgreSQL server here: {HOW_TO_GET}")
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def study_url(request, tmp_path) -> str:
    """An empty database for a shared study: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    server = request.getfixturevalue("postgres")
    return server.create_database(f"study_{tmp_path.name.lower()}"[:60])


# ---- the bench scripts' smoke modes ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bench_run(tmp_path_factory) -> Path:
    """A tiny trained and fully measured run for the bench scripts' smoke modes (tests/bench_smoke.py), built once
    and shared by the xdist workers (their temporary folders' common parent)."""
    from tests.bench_smoke import tiny_run

    return tiny_run(tmp_path_factory.getbasetemp().parent)
