"""Model side: search space and `Arch`, elastic layers, the supernets, extraction and the cost model."""

from supernet.arch import Arch
from supernet.config import ModelConfig
from supernet.costs import Costs, arch_costs
from supernet.extract import extract_subnet
from supernet.importance import reorder_by_importance
from supernet.model import LMSupernet, Supernet, ViTSupernet, build_supernet
from supernet.space import SearchSpace
from supernet.static import StaticLM, StaticSubnet, StaticViT, build_subnet

__all__ = [
    "Arch",
    "Costs",
    "LMSupernet",
    "ModelConfig",
    "SearchSpace",
    "StaticLM",
    "StaticSubnet",
    "StaticViT",
    "Supernet",
    "ViTSupernet",
    "arch_costs",
    "build_subnet",
    "build_supernet",
    "extract_subnet",
    "reorder_by_importance",
]
