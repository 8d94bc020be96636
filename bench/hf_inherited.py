"""What inherited subnets of an imported pretrained model reach after elastic fine-tuning (issue: bring your own
pretrained transformer), on the test split, selected on the validation subset.

    python bench/hf_inherited.py --run results/hf_demo --pretrained results/hf_pretrained
    python bench/hf_inherited.py --run <run> --pretrained <dir> --smoke   # seconds: checks that it runs

For the pretrained model and for the search's front archs at ≤ `--macs-fraction` of its MACs: test accuracy of the
arch straight after import (the same reordering, no fine-tuning) and after elastic fine-tuning. The "best inherited
subnet" is the front arch with the best *validation* accuracy within the MAC limit (chosen without the test split).
Writes bench/results/hf_inherited.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = str(ROOT / "bench" / "results" / "hf_inherited")

from predictors.measure import evaluate, fixed_batches  # noqa: E402
from predictors.measure_cli import build_data  # noqa: E402
from search.choose import read_front  # noqa: E402
from supernet.artifact import load_supernet  # noqa: E402
from supernet.costs import arch_costs  # noqa: E402
from supernet.extract import extract_subnet  # noqa: E402
from supernet.hf.load import load_pretrained  # noqa: E402
from supernet.hf.prepare import prepare_pretrained  # noqa: E402
from supernet.hf.save import hf_logits  # noqa: E402
from supernet.runtime.kernels import cpu_name  # noqa: E402
from supernet.training import task_loss  # noqa: E402


class HF(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hf_logits(self.model, x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="results/hf_demo")
    ap.add_argument("--pretrained", default="results/hf_pretrained")
    ap.add_argument("--macs-fraction", type=float, default=0.5)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--smoke", action="store_true", help="seconds: 2 front archs, results in a temporary folder")
    args = ap.parse_args()
    if args.smoke and args.out == OUT:
        args.out = str(Path(tempfile.mkdtemp(prefix="hf_inherited_smoke_")) / "hf_inherited")
    torch.set_num_threads(2)

    net, info = load_supernet(args.run)
    pre = info["pretrained"]
    dm = build_data(info, {})
    dm.setup()
    test = fixed_batches(dm.test_dataloader())
    # The fresh import, rebuilt exactly as nas-train built it (same data batches, same reordering and ranking).
    model_cfg = {
        "pretrained": pre["source"],
        "importance": pre["importance"],
        "importance_batches": pre["importance_batches"],
        "depth_drop": pre["depth_drop"],
        "bit_norms": net.config.bit_norms,
    }
    torch.manual_seed(0)
    fresh = prepare_pretrained(model_cfg, {**net.space.to_dict()}, dm.input_spec(), dm.train_dataloader, task_loss).net

    if fresh.config.layer_rank != net.config.layer_rank:
        raise SystemExit(f"fresh import ranked layers {fresh.config.layer_rank}, the run {net.config.layer_rank}")
    hf = load_pretrained(args.pretrained)
    largest = net.space.largest()
    full_macs = arch_costs(largest, net.config).macs
    pretrained_acc = evaluate(HF(hf), test, "image")["accuracy"]

    rows, _, _ = read_front(Path(args.run) / "search")
    cands = []
    for r in rows:
        arch = net.space.decode([int(g) for g in r["genes"].split()])
        macs = arch_costs(arch, net.config).macs
        if macs <= args.macs_fraction * full_macs:
            cands.append((float(r["accuracy"]), arch, macs))
    lines = [
        f"machine: {cpu_name()}",
        f"pretrained {pre['family']} from {pre['source']}: test accuracy {pretrained_acc:.2f} %, {full_macs:,} MACs",
        "",
        "| arch | MACs (× pretrained) | validation acc (search) | test acc, inherited at import | "
        "test acc, after elastic fine-tuning | Δ vs pretrained |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    out = {"machine": cpu_name(), "pretrained_test_acc": pretrained_acc, "full_macs": full_macs, "archs": []}
    for val_acc, arch, macs in sorted(cands, key=lambda c: -c[0])[: 2 if args.smoke else 8]:
        before = evaluate(extract_subnet(fresh, arch), test, "image")["accuracy"]
        after = evaluate(extract_subnet(net, arch), test, "image")["accuracy"]
        out["archs"].append(
            {"arch": arch.key(), "macs": macs, "val_acc": val_acc, "test_before": before, "test_after": after}
        )
        lines.append(
            f"| {arch.key()} | {macs:,} ({macs / full_macs:.2f}) | {val_acc:.2f} | {before:.2f} | "
            f"{after:.2f} | {after - pretrained_acc:+.2f} |"
        )
    lg_after = evaluate(extract_subnet(net, largest), test, "image")["accuracy"]
    out["largest_after"] = lg_after
    lines += ["", f"largest arch after elastic fine-tuning: test {lg_after:.2f} % (pretrained {pretrained_acc:.2f} %)"]
    if out["archs"]:
        best = out["archs"][0]
        out["best"] = best
        lines.append(
            f"best inherited subnet at ≤ {args.macs_fraction:.0%} MACs (chosen on validation): {best['arch']}, "
            f"test {best['test_after']:.2f} % ({best['test_after'] - pretrained_acc:+.2f} points)"
        )
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".txt").write_text(text + "\n")
    Path(args.out + ".json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
