"""`SearchSpace`: the choices per search dimension, and everything that depends only on them.

It samples archs (with a caller-owned `numpy.random.Generator`, never global state), validates them with errors that
name the field, the value and the allowed choices, encodes an arch to integer genes for pymoo and decodes genes back,
and counts its exact size.

Gene layout (all genes are indices into the choice tuples, lower bound 0, upper bound `len(choices) - 1`)::

    [depth, embed_dim, a_bits, num_heads[0..L), mlp_ratio[0..L), w_bits[0..L)]      L = max depth

Genes of layers at or beyond the decoded depth are ignored, so two vectors that differ only there decode to the same
arch; `encode` writes 0 there, which makes `encode(decode(g))` the canonical representative of `g`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from supernet.arch import Arch
from supernet.configio import plain_dict

# Bit-widths the quantizers implement (see supernet/quant.py); 32 means float.
SUPPORTED_W_BITS = (1, 2, 4, 8, 16, 32)
SUPPORTED_A_BITS = (4, 8, 16, 32)

GLOBAL_GENES = ("depth", "embed_dim", "a_bits")
LAYER_GENES = ("num_heads", "mlp_ratio", "w_bits")


def _as_tuple(name: str, value: Any, kind: type) -> tuple:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"space.{name} must be a list of choices, got {value!r}")
    if len(value) == 0:
        raise ValueError(f"space.{name} is empty; give at least one choice")
    try:
        out = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"space.{name}={list(value)!r} must contain {kind.__name__} values") from None
    if kind is int and any(float(v) != int(v) for v in value):
        raise ValueError(f"space.{name}={list(value)!r} must contain integers")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"space.{name}={list(value)!r} must contain finite numbers")
    if len(set(out)) != len(out):
        raise ValueError(f"space.{name}={list(value)!r} has duplicate choices")
    return tuple(sorted(out))


@dataclass(frozen=True)
class SearchSpace:
    """Choices per dimension. Per-layer dimensions (`num_heads`, `mlp_ratio`, `w_bits`) are chosen per active layer."""

    depth: tuple[int, ...]
    embed_dim: tuple[int, ...]
    num_heads: tuple[int, ...]
    mlp_ratio: tuple[float, ...]
    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...] = (32,)
    name: str = "custom"

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "name":
                continue
            kind = float if f.name == "mlp_ratio" else int
            object.__setattr__(self, f.name, _as_tuple(f.name, getattr(self, f.name), kind))
        self._check_consistency()

    def _check_consistency(self) -> None:
        for name in ("depth", "embed_dim", "num_heads", "mlp_ratio"):
            bad = [v for v in getattr(self, name) if v <= 0]
            if bad:
                raise ValueError(f"space.{name} has non-positive choice(s) {bad}; all choices must be > 0")
        for name, allowed in (("w_bits", SUPPORTED_W_BITS), ("a_bits", SUPPORTED_A_BITS)):
            bad = [b for b in getattr(self, name) if b not in allowed]
            if bad:
                raise ValueError(f"space.{name} has unsupported bit-width(s) {bad}; supported: {allowed}")
        for r in self.mlp_ratio:
            for e in self.embed_dim:
                if abs(r * e - round(r * e)) > 1e-9:
                    raise ValueError(
                        f"space: mlp_ratio={r:g} × embed_dim={e} = {r * e:g} is not an integer FFN width; "
                        "choose ratios and widths whose products are integers"
                    )

    # ---- construction and I/O -------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SearchSpace:
        """Build from a mapping (a Hydra/OmegaConf node or a plain dict)."""
        required = ("depth", "embed_dim", "num_heads", "mlp_ratio", "w_bits")
        return cls(**plain_dict(cfg, "search space", (f.name for f in fields(cls)), required))

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """Load a space from a YAML file (e.g. `conf/space/default.yaml`)."""
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"search space file {p} does not exist")
        return cls.from_config(yaml.safe_load(p.read_text()))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists of builtins): the form stored in artifacts."""
        d: dict[str, Any] = {f.name: list(getattr(self, f.name)) for f in fields(self) if f.name != "name"}
        d["name"] = self.name
        return d

    def fingerprint(self) -> str:
        """Short hash of the choices (not the name): artifacts from another space are refused by comparing it."""
        d = self.to_dict()
        d.pop("name")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    # ---- extremes, size ---------------------------------------------------------------------------------------------

    @property
    def max_depth(self) -> int:
        return self.depth[-1]

    def largest(self) -> Arch:
        """Every dimension at its largest choice (widest, deepest, highest precision)."""
        d = self.depth[-1]
        return Arch(
            d,
            self.embed_dim[-1],
            (self.num_heads[-1],) * d,
            (self.mlp_ratio[-1],) * d,
            (self.w_bits[-1],) * d,
            self.a_bits[-1],
        )

    def smallest(self) -> Arch:
        """Every dimension at its smallest choice (lowest bits included)."""
        d = self.depth[0]
        return Arch(
            d,
            self.embed_dim[0],
            (self.num_heads[0],) * d,
            (self.mlp_ratio[0],) * d,
            (self.w_bits[0],) * d,
            self.a_bits[0],
        )

    def size(self) -> int:
        """Exact number of distinct archs (Python int: the default space exceeds 2**32)."""
        per_layer = len(self.num_heads) * len(self.mlp_ratio) * len(self.w_bits)
        return len(self.embed_dim) * len(self.a_bits) * sum(per_layer**d for d in self.depth)

    def all_archs(self, limit: int = 1_000_000) -> Iterator[Arch]:
        """Every arch of the space, each once (for exhaustive ground truth on small spaces)."""
        if self.size() > limit:
            raise ValueError(f"space '{self.name}' has {self.size()} archs, more than limit={limit} to enumerate")
        layer_choices = list(itertools.product(self.num_heads, self.mlp_ratio, self.w_bits))
        for d, e, a in itertools.product(self.depth, self.embed_dim, self.a_bits):
            for layers in itertools.product(layer_choices, repeat=d):
                h, r, w = zip(*layers, strict=True)
                yield Arch(d, e, h, r, w, a)

    # ---- sampling and validation ------------------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator) -> Arch:
        """One arch with every choice drawn uniformly and independently (depth first, then per active layer)."""
        d = int(rng.choice(self.depth))
        return Arch(
            depth=d,
            embed_dim=int(rng.choice(self.embed_dim)),
            num_heads=tuple(int(v) for v in rng.choice(self.num_heads, size=d)),
            mlp_ratio=tuple(float(v) for v in rng.choice(self.mlp_ratio, size=d)),
            w_bits=tuple(int(v) for v in rng.choice(self.w_bits, size=d)),
            a_bits=int(rng.choice(self.a_bits)),
        )

    def validate(self, arch: Arch) -> Arch:
        """Return `arch` if every value is one of this space's choices; else raise one ValueError naming the first bad
        field, its value and the allowed choices, e.g. `num_heads[2]=3 not in (1, 2, 4)`."""
        if not isinstance(arch, Arch):
            raise ValueError(f"expected an Arch, got {type(arch).__name__}; build one with Arch.from_dict(...)")
        for name in GLOBAL_GENES:
            v = getattr(arch, name)
            if v not in getattr(self, name):
                raise ValueError(f"{name}={v} not in {getattr(self, name)} (space '{self.name}')")
        for name in LAYER_GENES:
            for i, v in enumerate(getattr(arch, name)):
                if v not in getattr(self, name):
                    shown = f"{v:g}" if name == "mlp_ratio" else v
                    raise ValueError(f"{name}[{i}]={shown} not in {getattr(self, name)} (space '{self.name}')")
        return arch

    def contains(self, arch: Arch) -> bool:
        try:
            self.validate(arch)
        except ValueError:
            return False
        return True

    # ---- genes ------------------------------------------------------------------------------------------------------

    @property
    def n_genes(self) -> int:
        return len(GLOBAL_GENES) + len(LAYER_GENES) * self.max_depth

    def gene_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive integer bounds (xl, xu) for pymoo."""
        L = self.max_depth
        xu = [len(getattr(self, n)) - 1 for n in GLOBAL_GENES]
        for n in LAYER_GENES:
            xu += [len(getattr(self, n)) - 1] * L
        return np.zeros(self.n_genes, dtype=np.int64), np.asarray(xu, dtype=np.int64)

    def encode(self, arch: Arch) -> np.ndarray:
        """Integer genes of `arch` (validated); inactive layers get gene 0."""
        self.validate(arch)
        L = self.max_depth
        g = np.zeros(self.n_genes, dtype=np.int64)
        for j, n in enumerate(GLOBAL_GENES):
            g[j] = getattr(self, n).index(getattr(arch, n))
        for k, n in enumerate(LAYER_GENES):
            base = len(GLOBAL_GENES) + k * L
            choices = getattr(self, n)
            for i, v in enumerate(getattr(arch, n)):
                g[base + i] = choices.index(v)
        return g

    def decode(self, genes: Sequence[int] | np.ndarray) -> Arch:
        """Arch for a gene vector; genes of layers at or beyond the decoded depth are ignored."""
        g = np.asarray(genes)
        if g.shape != (self.n_genes,):
            raise ValueError(f"expected {self.n_genes} genes for space '{self.name}', got shape {tuple(g.shape)}")
        if not np.all(np.isfinite(g)) or not np.all(g == np.round(g)):
            raise ValueError(f"genes must be integers, got {g.tolist()}")
        g = g.astype(np.int64)
        xl, xu = self.gene_bounds()
        bad = np.flatnonzero((g < xl) | (g > xu))
        L = self.max_depth
        d = self.depth[g[0]] if 0 <= g[0] <= xu[0] else None
        for j in bad:
            # Out-of-range genes of inactive layers are ignored like any other inactive gene.
            if j >= len(GLOBAL_GENES) and d is not None and (j - len(GLOBAL_GENES)) % L >= d:
                continue
            raise ValueError(f"gene {j}={g[j]} outside its bounds [{xl[j]}, {xu[j]}]")
        assert d is not None
        vals: dict[str, Any] = {n: getattr(self, n)[g[j]] for j, n in enumerate(GLOBAL_GENES)}
        for k, n in enumerate(LAYER_GENES):
            base = len(GLOBAL_GENES) + k * L
            vals[n] = tuple(getattr(self, n)[g[base + i]] for i in range(d))
        return Arch(**vals)

    def canonical_genes(self, genes: Sequence[int] | np.ndarray) -> np.ndarray:
        """Genes with inactive layers zeroed: two vectors decode to the same arch iff their canonical genes match."""
        return self.encode(self.decode(genes))
