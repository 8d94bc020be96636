"""`Arch`: one subnet of the supernet, as a frozen, typed value.

An arch names the active depth, the embedding width, and for each *active* layer its attention heads, FFN ratio and
weight bit-width, plus one activation bit-width for the whole net. Layers beyond `depth` are not part of an arch, so
the canonical form (and the key used for caching and dedupe) never depends on switched-off layers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import yaml

PER_LAYER_FIELDS = ("num_heads", "mlp_ratio", "w_bits")


def _runs(values: Sequence[Any]) -> str:
    """Per-layer values with each maximal run of n >= 2 equal values written `v*n`: 9,9,9,6 -> '9*3-6'."""
    parts, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        n = j - i + 1
        parts.append(f"{values[i]}*{n}" if n > 1 else str(values[i]))
        i = j + 1
    return "-".join(parts)


def _unruns(text: str, cast) -> list:
    out = []
    for part in text.split("-"):
        value, _, n = part.partition("*")
        out += [cast(value)] * (int(n) if n else 1)
    return out


def canonical_key(key: str) -> str:
    """The current canonical key of an arch key in any format this project has written (the format before FFN
    widths wrote ratios per layer, `_r4-2.5`): what old measurement tables and studies are re-keyed with. A key
    already current is returned as it is."""
    return Arch.from_key(key).key() if "_r" in key else key


def as_int(name: str, v: Any) -> int:
    """`v` as an int if it is integral (3, 3.0, "3", numpy ints); else one ValueError naming the field."""
    if isinstance(v, bool):
        raise ValueError(f"{name}={v!r} must be an integer")
    if isinstance(v, Integral):
        return int(v)
    if isinstance(v, str) and v.strip().lstrip("+-").isdigit():
        return int(v)
    if isinstance(v, Real) and math.isfinite(v) and float(v).is_integer():
        return int(v)
    raise ValueError(f"{name}={v!r} must be an integer")


@dataclass(frozen=True)
class Arch:
    """One subnet: global dims plus per-layer choices for the first `depth` layers."""

    depth: int
    embed_dim: int
    num_heads: tuple[int, ...]
    mlp_ratio: tuple[float, ...]
    w_bits: tuple[int, ...]
    a_bits: int = 32

    def __post_init__(self) -> None:
        # Normalise to builtins (tuples, ints, floats) so equal archs compare, hash and key equal.
        for name in ("depth", "embed_dim", "a_bits"):
            object.__setattr__(self, name, as_int(name, getattr(self, name)))
        object.__setattr__(self, "num_heads", tuple(as_int("num_heads", h) for h in self.num_heads))
        object.__setattr__(self, "mlp_ratio", tuple(float(r) for r in self.mlp_ratio))
        object.__setattr__(self, "w_bits", tuple(as_int("w_bits", b) for b in self.w_bits))
        if self.depth < 1:
            raise ValueError(f"depth={self.depth} must be a positive integer")
        for name in PER_LAYER_FIELDS:
            n = len(getattr(self, name))
            if n != self.depth:
                raise ValueError(f"{name} has {n} entries but depth={self.depth}; give one value per active layer")

    def key(self) -> str:
        """Canonical string key, stable across runs and processes: depth, embedding width, activation bits, then per
        layer the heads, FFN widths and weight bits, runs of equal values written `v*n`; e.g.
        `d3_e128_a32_h4*2-2_f512-320*2_w32-8*2`. At most the digits of the widest heads, FFN width and bits plus
        three separators a layer (tests/test_arch.py `key_length_bound`): a 30-layer arch of SmolLM-135M's shape
        takes at most 315 characters (random ones 239 median; 589 and up to 735 in the format before), its largest
        34 (`d30_e576_a32_h9*30_f1536*30_w32*30`). Keys still grow with depth, so databases key on a digest of it
        (search/claims.py) and no file is named by it."""
        return (
            f"d{self.depth}_e{self.embed_dim}_a{self.a_bits}"
            f"_h{_runs(self.num_heads)}"
            f"_f{_runs([self.ffn_hidden(i) for i in range(self.depth)])}"
            f"_w{_runs(self.w_bits)}"
        )

    @classmethod
    def from_key(cls, key: str, space: Any = None) -> Arch:
        """The arch of a key, in the current format (FFN widths, `_f`; ratio = width / embed_dim, the correctly
        rounded float of that fraction) or the earlier one (FFN ratios per layer, `_r`). The fraction equals a
        space's ratio whenever that ratio is the float nearest to width / embed_dim (ratios typed as decimals, and
        `w / E` as supernet/hf/load.py builds them); with `space` (a SearchSpace) given, each ratio is the space's
        choice of the same FFN width, so an arch of the space comes back equal whatever its ratios' spelling."""
        arch = cls._parse_key(key)
        if space is None:
            return arch
        same_width = {round(r * arch.embed_dim): float(r) for r in space.mlp_ratio}
        ratios = [same_width.get(arch.ffn_hidden(i), r) for i, r in enumerate(arch.mlp_ratio)]
        return cls(arch.depth, arch.embed_dim, arch.num_heads, ratios, arch.w_bits, arch.a_bits)

    @classmethod
    def _parse_key(cls, key: str) -> Arch:
        try:
            d, e, a, h, f, w = key.split("_")
            if not (d[0], e[0], a[0], h[0], w[0]) == ("d", "e", "a", "h", "w") or f[0] not in "fr":
                raise ValueError
            embed = int(e[1:])
            ffn = _unruns(f[1:], int if f[0] == "f" else float)  # widths, or (the earlier format) ratios
            ratios = [x / embed for x in ffn] if f[0] == "f" else ffn
            return cls(int(d[1:]), embed, _unruns(h[1:], int), ratios, _unruns(w[1:], int), int(a[1:]))
        except (ValueError, IndexError, ZeroDivisionError):
            raise ValueError(f"{key!r} is not an arch key (expected e.g. d2_e128_a32_h4-2_f512-256_w32-8)") from None

    def __str__(self) -> str:
        return self.key()

    def layer(self, i: int) -> tuple[int, float, int]:
        """(num_heads, mlp_ratio, w_bits) of active layer `i`."""
        return self.num_heads[i], self.mlp_ratio[i], self.w_bits[i]

    def truncate(self, depth: int) -> Arch:
        """The same arch keeping only its first `depth` layers."""
        if not 1 <= depth <= self.depth:
            raise ValueError(f"depth={depth} must lie in [1, {self.depth}] to truncate {self.key()}")
        n = depth
        return Arch(n, self.embed_dim, self.num_heads[:n], self.mlp_ratio[:n], self.w_bits[:n], self.a_bits)

    def ffn_hidden(self, i: int) -> int:
        """FFN hidden width of layer `i`: mlp_ratio × embed_dim (the space guarantees it is an integer)."""
        return round(self.mlp_ratio[i] * self.embed_dim)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of builtins (lists, ints, floats): safe for YAML and JSON."""
        return {
            "depth": self.depth,
            "embed_dim": self.embed_dim,
            "num_heads": list(self.num_heads),
            "mlp_ratio": list(self.mlp_ratio),
            "w_bits": list(self.w_bits),
            "a_bits": self.a_bits,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Arch:
        """Build from a mapping; per-layer values may be a list or one scalar broadcast to all `depth` layers."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown arch field(s) {sorted(unknown)}; expected {sorted(names)}")
        missing = names - set(d) - {"a_bits"}
        if missing:
            raise ValueError(f"arch is missing field(s) {sorted(missing)}")
        depth = as_int("depth", d["depth"])
        kwargs: dict[str, Any] = {"depth": depth, "embed_dim": d["embed_dim"], "a_bits": d.get("a_bits", 32)}
        for name in PER_LAYER_FIELDS:
            v = d[name]
            kwargs[name] = list(v) if isinstance(v, Sequence) and not isinstance(v, str) else [v] * depth
        return cls(**kwargs)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text of the arch; also written to `path` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> Arch:
        """Parse YAML text, or read it from an existing file path."""
        text = str(text_or_path)
        try:
            is_file = isinstance(text_or_path, Path) or ("\n" not in text and Path(text).is_file())
        except OSError:  # e.g. YAML text too long to be a file name
            is_file = False
        if is_file:
            if not Path(text).is_file():
                raise ValueError(f"arch file {text} does not exist")
            text = Path(text).read_text()
        data = yaml.safe_load(text)
        if not isinstance(data, Mapping):
            raise ValueError(f"arch YAML must be a mapping of fields, got {type(data).__name__}")
        return cls.from_dict(data)
