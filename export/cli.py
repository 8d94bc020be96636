"""`nas-export`: extract a chosen subnet and ship it as a standalone model (see conf/export.yaml for every option).

    nas-export run=results/demo                         # the knee point of results/demo/search/pareto.csv
    nas-export run=results/demo select=best best=accuracy +where.latency.max=1.0

Writes `<run>/subnets/<name>/`: `arch.yaml` (arch, model config, measured and predicted metrics, provenance,
verification, weights hash, the runtime's kernel per layer), `model.safetensors` (packed low-bit weights,
supernet/subnet_io.py), `model.onnx` (the deployment graph of supernet/runtime/: low-bit weights stored low-bit, every
block linear on this machine's fastest correct kernel) and `report.md`. Before anything is kept, the exported files
are loaded back and checked against `supernet(x, arch)` on real validation data, in PyTorch and in ONNX Runtime. The
directory appears only when everything succeeded.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from predictors.measure import (
    LatencyConfig,
    evaluate,
    fixed_batches,
    kernel_table,
    latency,
    latency_target,
    paired_reference,
    runtime_latency,
)
from predictors.measure_cli import CONF_DIR, SETTINGS_NAME, TABLE_NAME, build_data, kernels_path, prepare
from predictors.models import SklearnPredictor
from predictors.table import MeasurementTable, writer_lock
from search.choose import choose, read_front
from supernet.arch import Arch
from supernet.artifact import read_metadata
from supernet.cli import run_or_exit
from supernet.costs import arch_costs
from supernet.extract import extract_subnet
from supernet.model import Supernet
from supernet.qat import bake_weight_quantizers
from supernet.runtime.graph import build_runtime_model, write_runtime_model
from supernet.runtime.kernels import KernelTable, float_plan
from supernet.runtime.session import executed_ops, initializer_bytes, make_session
from supernet.static import StaticSubnet
from supernet.subnet_io import WEIGHTS_NAME, load_subnet, read_arrays, save_subnet
from supernet.tolerance import bounds, compare, describe
from supernet.training import SubnetModule


class AtArch(torch.nn.Module):
    """The supernet fixed at one arch, so its latency is measured the same way as the exported module's."""

    def __init__(self, net: Supernet, arch: Arch) -> None:
        super().__init__()
        self.net, self.arch = net, arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, self.arch)


def pick(cfg: DictConfig, meta: dict[str, Any], supernet_sha: str) -> tuple[Arch, dict[str, str] | None, str, str]:
    """(arch, its pareto.csv row or None, why it was chosen, default folder name)."""
    space = meta["space"]
    if cfg.arch:
        try:
            arch = space.validate(Arch.from_yaml(Path(str(cfg.arch))))
        except ValueError as e:
            raise ValueError(f"arch={cfg.arch}: {e}") from None
        return arch, None, f"the arch in {cfg.arch}", "arch"
    rows, objectives, state = read_front(cfg.search)
    if state.get("supernet_sha256") not in (None, supernet_sha):
        raise ValueError(
            f"{cfg.search} was searched on another supernet than {cfg.run}/supernet.safetensors "
            "(hash differs); search again or point search= at this run's search"
        )
    where = OmegaConf.to_container(cfg.where, resolve=True) if cfg.where else {}
    row, why = choose(rows, objectives, cfg.select, cfg.index, cfg.best, where, meta["model"].task)
    arch = space.decode([int(g) for g in row["genes"].split()])
    name = {"index": f"index{cfg.index}", "best": f"best_{cfg.best}"}.get(cfg.select, cfg.select)
    return arch, row, why, name


def test_batches(info: dict, cfg: DictConfig) -> list:
    """The data module's test split (never used for training, selection or the search), as fixed batches."""
    dm = build_data(info, OmegaConf.to_container(cfg.data_overrides, resolve=True))
    dm.setup()
    return fixed_batches(dm.test_dataloader())


def finetune(net: Supernet, sub: torch.nn.Module, info: dict, cfg: DictConfig) -> None:
    """Distil `sub` (quantization-aware form) from the supernet's largest arch for `cfg.finetune.epochs` epochs."""
    overrides = {**OmegaConf.to_container(cfg.data_overrides, resolve=True)}
    if cfg.finetune.train_subset:
        overrides["train_subset"] = cfg.finetune.train_subset
        # A subset's own statistics would shift every input from what the supernet was trained and measured on.
        recorded = (info.get("data") or {}).get("preprocessing") or {}
        if "normalize_mean" in recorded:
            overrides["normalize"] = {k: recorded[k] for k in ("normalize_mean", "normalize_std")}
    dm = build_data(info, overrides)
    largest = net.space.largest()
    train = {"lr": cfg.finetune.lr, "warmup_fraction": cfg.finetune.get("warmup_fraction", 0.0), "seed": cfg.seed}
    module = SubnetModule(sub, train, teacher=lambda x: net(x, largest))
    L.seed_everything(cfg.seed, verbose=False)
    trainer = L.Trainer(
        max_epochs=cfg.finetune.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_model_summary=False,
        gradient_clip_val=1.0,
    )
    trainer.fit(module, datamodule=dm)
    sub.eval()


class RuntimeModule(torch.nn.Module):
    """An ONNX Runtime session behind the nn.Module call interface, so `evaluate` scores the runtime model."""

    def __init__(self, model, threads: int = 1) -> None:
        super().__init__()
        self.session = make_session(model, threads)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: x.cpu().numpy()})[0])


@torch.no_grad()
def verify(
    reference: torch.nn.Module,
    exported: torch.nn.Module,
    runtime: torch.nn.Module,
    x: torch.Tensor,
    quantized: bool,
    cfg: DictConfig,
) -> dict:
    """The exported module and the runtime model against `reference` on `x` (supernet/tolerance.py): the module to
    float rounding; the graph too, or, with 8-bit activations, to a quantization step and `min_argmax_agreement`."""
    ref = reference(x)
    v = cfg.verify
    rtol = v.get("rtol_quantized_act") if quantized else v.get("rtol")
    graph = bounds(quantized, rtol, v.get("min_argmax_agreement"))
    return {
        "torch": compare(exported(x), ref, *bounds(False, v.get("rtol"))),
        "onnx": compare(runtime(x), ref, *graph),
    }  # fmt: skip


def export_run(cfg: DictConfig) -> Path:
    """Choose, extract, (fine-tune,) save, reload, verify; returns the subnet's directory."""
    run = Path(cfg.run)
    if not run.is_dir():
        raise ValueError(f"run directory {run} does not exist; train one with nas-train or pass run=<dir>")
    meta = read_metadata(run)
    supernet_sha = hashlib.sha256((run / "supernet.safetensors").read_bytes()).hexdigest()
    arch, row, why, default_name = pick(cfg, meta, supernet_sha)
    out = Path(cfg.out) / str(cfg.name or default_name)
    # One export per target at a time, from the existence check to the final move: a second export to the same name
    # is refused at once (the OS drops the lock of a process that dies), so overwrite=false cannot be raced past and
    # the `.<name>.old` backup of an overwrite is never another export's.
    with writer_lock(out, "nas-export", instead="export under another name=<name>"):
        if out.exists() and not cfg.overwrite:
            raise ValueError(f"{out} already exists; pass overwrite=true to replace it, or name=<another name>")
        return _export(cfg, run, meta, supernet_sha, arch, row, why, out)


def _export(cfg: DictConfig, run: Path, meta: dict, supernet_sha: str, arch: Arch, row, why: str, out: Path) -> Path:
    print(f"nas-export: exporting {arch.key()}: {why}")
    net, batches, example, lat_cfg = prepare(cfg)
    task = net.config.task
    sub = extract_subnet(net, arch, qat=True)
    metrics: dict[str, Any] = {"measured_at_export": evaluate(sub, batches, task)}
    if cfg.finetune.epochs > 0:
        before = metrics["measured_at_export"]
        # The validation subset also picked this arch (and the fine-tuning budget): the claim is scored on the test
        # split too, next to the supernet's largest arch there.
        test = test_batches(meta["info"], cfg)
        test_before = evaluate(sub, test, task)
        finetune(net, sub, meta["info"], cfg)
        metrics["finetune"] = {
            "epochs": cfg.finetune.epochs,
            "before": before,
            "after": evaluate(sub, batches, task),
            "test": {
                "before": test_before,
                "after": evaluate(sub, test, task),
                "largest_arch": evaluate(extract_subnet(net, net.space.largest()), test, task),
                "examples": sum(len(y) for _, y in test),
            },
        }
        ft = metrics["finetune"]
        print(f"nas-export: fine-tuned {cfg.finetune.epochs} epoch(s): validation {before} -> {ft['after']}; test "
              f"{test_before} -> {ft['test']['after']} (largest arch {ft['test']['largest_arch']})")  # fmt: skip
    # After fine-tuning the reference is the fine-tuned module (a baked copy: `sub` keeps its quantizers, so the
    # packed codes come from its latent weights exactly as the supernet's would).
    reference = bake_weight_quantizers(copy.deepcopy(sub)) if cfg.finetune.epochs > 0 else AtArch(net, arch)
    # A fresh folder per process: two exports to one name never mix their files before one of them is moved in.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    # The exported graph always runs on the runtime's kernels, also when the search timed latency in torch.
    ort_cfg = replace(lat_cfg, runtime="onnxruntime", device="cpu")
    kernels = kernel_table(ort_cfg, net.config, example, kernels_path(cfg))
    job = ExportJob(
        run, net, sub, arch, reference, batches, example, lat_cfg, kernels, row, why, metrics, meta, supernet_sha
    )
    try:
        _write(tmp, out, cfg, job)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed export leaves nothing half-written behind
    return out


def fitted_prediction(
    run: Path, arch: Arch, meta: dict[str, Any], supernet_sha: str, latency_settings: dict[str, Any]
) -> tuple[dict[str, float], str]:
    """({"latency_ms": ...}, note) from the latency predictor nas-fit saved in `<run>/predictors`: only when it was
    fitted on this supernet with these latency settings, and labelled in-sample when `arch` was one of its fit rows
    (its prediction there says how well it fits, not how well it predicts)."""
    out = run / "predictors"
    try:
        predictor = SklearnPredictor.load(out, "latency_ms", meta["space"], meta["model"])
        saved = json.loads((out / SETTINGS_NAME).read_text())
    except (ValueError, OSError):
        return {}, ""
    if saved.get("supernet_sha256") != supernet_sha or saved.get("latency") != latency_settings:
        return {}, "nas-fit's latency predictor was fitted on another supernet or latency settings: not used"
    value = {"latency_ms": float(predictor.predict([arch])[0])}
    table = out / TABLE_NAME
    rows = MeasurementTable(table, table.read_text().split("\n", 1)[0].split(",")).rows if table.is_file() else {}
    if rows.get(arch.key(), {}).get("split") == "fit":
        return value, "in-sample: nas-fit's predictor was fitted on this arch's own measurement"
    return value, "out-of-sample: nas-fit's predictor never saw this arch"


@dataclass
class ExportJob:
    """Everything chosen and computed before the files are written."""

    run: Path
    net: Supernet
    sub: StaticSubnet  # quantization-aware form: latent float weights behind the quantizers
    arch: Arch
    reference: torch.nn.Module  # what the exported files must reproduce
    batches: list
    example: torch.Tensor
    lat_cfg: LatencyConfig
    kernels: KernelTable | None
    row: dict[str, str] | None  # the pareto.csv row, when chosen from a search
    why: str
    metrics: dict[str, Any]
    meta: dict[str, Any]
    supernet_sha: str


def _write(tmp: Path, out: Path, cfg: DictConfig, job: ExportJob) -> None:
    """Save into `tmp`, reload, verify, measure, and move `tmp` to `out` when the verification passed."""
    net, sub, arch, reference, batches, row = job.net, job.sub, job.arch, job.reference, job.batches, job.row
    example, lat_cfg, metrics, run = job.example, job.lat_cfg, job.metrics, job.run
    task = net.config.task
    save_subnet(sub, tmp)
    exported = load_subnet(tmp)  # everything below uses the files as a user would get them
    arrays = read_arrays(tmp / WEIGHTS_NAME)
    plan = job.kernels.plan(arch, net.config)
    onnx_path = tmp / "model.onnx"
    saved_model = write_runtime_model(arch, net.config, arrays, plan, onnx_path)  # past 2 GiB: model.onnx.data
    runtime = RuntimeModule(onnx_path, lat_cfg.threads)
    x = torch.cat([b[0] for b in batches])[: cfg.verify.batch]
    checks = verify(reference, exported, runtime, x, arch.a_bits < 32, cfg)
    ok = all(c["passed"] for c in checks.values())
    metrics["measured_at_export"] = evaluate(exported, batches, task)
    metrics["runtime_at_export"] = evaluate(runtime, batches, task)
    search_cols = {
        k: float(v)
        for k, v in (row or {}).items()
        if v not in ("", None)
        and k not in ("key", "genes")
        and not k.startswith(("pred_", "std_"))
        and k not in ("rank", "iteration")
    }
    predicted = {k[5:]: float(v) for k, v in (row or {}).items() if k.startswith("pred_") and v}
    note = "the search's predictor, fitted before this arch was measured" if "latency_ms" in predicted else ""
    if "latency_ms" not in predicted:  # chosen from rows measured before any refit: ask nas-fit's predictor
        fitted, note = fitted_prediction(
            run, arch, job.meta, job.supernet_sha, OmegaConf.to_container(cfg.latency, resolve=True)
        )
        predicted.update(fitted)
    torch_cfg = replace(
        lat_cfg, runtime="torch", estimator="min" if lat_cfg.estimator == "paired" else lat_cfg.estimator
    )
    runtime_cfg = replace(lat_cfg, runtime="onnxruntime", device="cpu")
    ref = paired_reference(net, job.kernels, example, runtime_cfg) if runtime_cfg.estimator == "paired" else None
    float_model = build_runtime_model(arch, net.config, arrays, float_plan(arch))
    lat = {
        "runtime_ms": runtime_latency(onnx_path, example, runtime_cfg, ref)["latency_ms"],
        "runtime_float_kernels_ms": runtime_latency(float_model, example, runtime_cfg, ref)["latency_ms"],
        "float_module_ms": latency(exported, example, torch_cfg)["latency_ms"],
        "supernet_at_arch_ms": latency(AtArch(net, arch), example, torch_cfg)["latency_ms"],
        "predicted_ms": predicted.get("latency_ms"),
        "predicted_from": note,
        "measured_in_search_ms": search_cols.get("latency_ms"),
        "settings": OmegaConf.to_container(cfg.latency, resolve=True),
    }
    size = (tmp / "model.safetensors").stat().st_size
    onnx_bytes = sum(p.stat().st_size for p in tmp.glob("model.onnx*"))  # the graph and its external data, if any
    cost_bytes = arch_costs(arch, net.config).bytes
    extra = {
        "metrics": {**metrics, "search_measured": search_cols, "predicted": predicted},
        "size": {
            "weights_file_bytes": size,
            "cost_model_bytes": cost_bytes,
            "ratio": size / cost_bytes,
            "onnx_file_bytes": onnx_bytes,
            "onnx_to_weights_ratio": onnx_bytes / size,
            # the tensors alone (the rest is the graph: a few KB, which dominates only for tiny models)
            "onnx_initializer_bytes": initializer_bytes(saved_model),
        },
        "runtime": {
            "model": "model.onnx",
            "target": latency_target(runtime_cfg),
            "kernel_table": job.kernels.target,
            "kernels": plan,
            "executed_ops": dict(Counter(executed_ops(onnx_path, lat_cfg.threads))),
        },
        "verification": {
            "inputs": len(x),
            "passed": ok,
            "reference": "fine-tuned module" if cfg.finetune.epochs > 0 else "supernet(x, arch)",
            **checks,
        },
        "latency": lat,
        "provenance": {
            "supernet": str(run / "supernet.safetensors"),
            "supernet_sha256": job.supernet_sha,
            "search": None if row is None else str(cfg.search),
            "selection": job.why,
            "seed": cfg.seed,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "preprocessing": (job.meta["info"].get("data") or {}).get("preprocessing"),
    }
    pretrained = job.meta["info"].get("pretrained")
    if pretrained:
        rtol = bounds(False, cfg.verify.get("rtol"))[0]
        extra["hugging_face"] = write_hf(exported, pretrained, tmp / "hf", x, bool(cfg.hf_pad), rtol)
        ok = ok and extra["hugging_face"].get("passed", True)
    save_subnet(sub, tmp, extra=json.loads(json.dumps(extra, default=float)))  # same weights; arch.yaml completed
    (tmp / "report.md").write_text(report(arch, extra))
    if not ok:
        found = [f"{name}: {describe(c)}" for name, c in checks.items()]
        hf = extra.get("hugging_face") or {}
        if hf.get("written"):
            found.append(f"Hugging Face: {describe(hf['check'])}")
        raise ValueError(f"verification failed: {'; '.join(found)}; nothing was written to {out}")
    replace_dir(tmp, out)
    for name, c in checks.items():
        print(f"nas-export: {name}: {describe(c)}")
    if pretrained:
        print(f"nas-export: {hf_summary(extra['hugging_face'])}")
    print(
        f"nas-export: weights {size} bytes ({size / cost_bytes:.4f} × the cost model's {cost_bytes}), model.onnx "
        f"{extra['size']['onnx_file_bytes']} bytes; latency {lat['runtime_ms']:.3f} ms in ONNX Runtime "
        f"({lat['runtime_float_kernels_ms']:.3f} ms on float kernels, {lat['float_module_ms']:.3f} ms float module)"
    )
    return out


def write_hf(
    module: torch.nn.Module, pretrained: dict[str, Any], out: Path, x: torch.Tensor, pad: bool, rtol: float
) -> dict[str, Any]:
    """Write the subnet back as a model of the imported family (`save_pretrained`), reload it with `from_pretrained`
    and compare its logits with the exported module's; or record in one line why the stock config cannot hold it."""
    from supernet.hf.load import load_pretrained
    from supernet.hf.save import hf_logits, save_hf, why_not

    arch, head_dim = module.arch, module.config.head_dim
    reason = why_not(arch, pretrained, head_dim, pad)
    if reason:
        return {"written": False, "family": pretrained["family"], "why_not": reason}
    padded = why_not(arch, pretrained, head_dim) is not None
    save_hf(module, pretrained, out, pad=padded)
    back = load_pretrained(str(out))
    with torch.no_grad():
        check = compare(hf_logits(back, x), module(x), rtol)
    params = sum(p.numel() for p in back.parameters())
    return {"written": True, "dir": out.name, "family": pretrained["family"], "padded": padded, "params": params,
            "subnet_params": sum(p.numel() for p in module.parameters()), "max_abs_diff": check["max_abs_diff"],
            "check": check, "passed": check["passed"]}  # fmt: skip


def hf_summary(hf: dict[str, Any]) -> str:
    """One line on the Hugging Face directory: what was written, or why not and what was written instead."""
    if not hf["written"]:
        return (f"no Hugging Face directory: {hf['why_not']}; wrote this project's model.safetensors and model.onnx "
                "instead")  # fmt: skip
    pad = f", zero-padded to the stock config ({hf['params']} parameters, subnet {hf['subnet_params']})"
    return (f"{hf['family']} directory hf/ (from_pretrained max |Δ| {hf['max_abs_diff']:.2e}"
            f"{pad if hf['padded'] else ''})")  # fmt: skip


def replace_dir(new: Path, out: Path) -> None:
    """Move `new` to `out`; an existing `out` is moved aside first and deleted only once `new` is in place (restored
    if that fails), so an interrupted overwrite never loses the old export."""
    if not out.exists():
        new.rename(out)
        return
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old)


def report(arch: Arch, extra: dict[str, Any]) -> str:
    """The human-readable summary written as report.md."""
    m, v, lat, size = extra["metrics"], extra["verification"], extra["latency"], extra["size"]
    lines = [
        f"# Exported subnet `{arch.key()}`",
        "",
        f"Chosen as {extra['provenance']['selection']}.",
        "",
        "| | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} (validation subset, at export) | {val:.4g} |" for k, val in m["measured_at_export"].items()]
    lines += [f"| {k} (measured during search) | {val:.4g} |" for k, val in m["search_measured"].items()]
    lines += [f"| {k} (predicted during search) | {val:.4g} |" for k, val in m["predicted"].items()]
    if "finetune" in m:
        ft = m["finetune"]
        lines += [f"| fine-tuning ({ft['epochs']} epochs), validation subset | {ft['before']} -> {ft['after']} |"]
        t = ft["test"]
        lines += [f"| fine-tuning, test split ({t['examples']} examples) | {t['before']} -> {t['after']} "
                  f"(the supernet's largest arch: {t['largest_arch']}) |"]  # fmt: skip
    lines += [
        f"| {k} (model.onnx in ONNX Runtime, at export) | {val:.4g} |" for k, val in m["runtime_at_export"].items()
    ]
    fmt = lambda x: "–" if x is None else f"{x:.3f} ms"  # noqa: E731
    lines += [
        f"| latency: model.onnx in ONNX Runtime (low-bit kernels) | {fmt(lat['runtime_ms'])} |",
        f"| latency: the same graph on float kernels | {fmt(lat['runtime_float_kernels_ms'])} |",
        f"| latency: PyTorch module (float simulation) | {fmt(lat['float_module_ms'])} |",
        f"| latency: supernet at this arch (PyTorch) | {fmt(lat['supernet_at_arch_ms'])} |",
        f"| latency: predicted | {fmt(lat['predicted_ms'])} {lat.get('predicted_from') or ''} |",
        f"| latency: measured in search | {fmt(lat['measured_in_search_ms'])} |",
        f"| weights file | {size['weights_file_bytes']} bytes ({size['ratio']:.4f} × cost model) |",
        f"| model.onnx | {size['onnx_file_bytes']} bytes ({size['onnx_to_weights_ratio']:.3f} × weights file) |",
        "",
        f"Verification on {v['inputs']} validation inputs against {v['reference']}, each check with the tolerance it "
        "was held to (relative: max |Δ| / max(1, max |reference|); supernet/tolerance.py): "
        + ("**passed**" if v["passed"] else "**FAILED**"),
        "",
    ]
    lines += [f"- {n}: {describe(v[n])}" for n in ("torch", "onnx")]
    kinds = Counter(k for layer in extra["runtime"]["kernels"] for k in layer.values())
    lines += [
        "",
        f"Runtime kernels of the block linears ({extra['runtime']['target']['runtime']}, "
        f"{extra['runtime']['target']['device']}): " + ", ".join(f"{k} × {n}" for k, n in sorted(kinds.items())),
        "",
        "Load it with `from supernet.subnet_io import load_subnet; model = load_subnet('<this folder>')`,",
        "or run `model.onnx` in ONNX Runtime. Inputs use the training preprocessing recorded in arch.yaml.",
        "",
    ]
    if "hugging_face" in extra:
        hf = extra["hugging_face"]
        lines += [f"Hugging Face: {hf_summary(hf)}."]
        if hf["written"]:
            lines += [f"Load it with `transformers.{hf['family']}.from_pretrained('<this folder>/hf')`.", ""]
    return "\n".join(lines)


@hydra.main(config_path=CONF_DIR, config_name="export", version_base=None)
def main(cfg: DictConfig) -> None:
    out = run_or_exit("nas-export", lambda: export_run(cfg))
    print(f"nas-export: arch.yaml, model.safetensors, model.onnx, report.md in {out}")


if __name__ == "__main__":
    main()
