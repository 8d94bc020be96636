"""`nas-train`: train a supernet from the Hydra config in `conf/` and write a self-describing run directory.

    nas-train experiment=demo                 # Fashion-MNIST demo supernet -> results/demo/
    nas-train experiment=smoke trainer=ddp    # 2 CPU processes
    nas-train --cfg job                       # print the composed config

Run directory (`results/<run_name>/`): `config.yaml` (resolved), `checkpoints/{last,best}.ckpt` (Lightning),
`supernet.safetensors` (weights + space + model config, what later stages load), `metrics.csv`,
`training_curves.png`, `train_summary.json`. Running the same command again resumes from `last.ckpt`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from supernet.artifact import save_supernet
from supernet.cli import run_or_exit
from supernet.config import ModelConfig
from supernet.curves import merge_metrics, plot_curves
from supernet.space import SearchSpace
from supernet.train_config import register, resolve_train_config
from supernet.training import NO_PRETRAINED, SupernetModule, task_loss, weight_averaging

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
register()  # the `train` group's typed schema, before any config is composed
# Keys whose change a resume accepts: how to run (devices, precision, limits, epochs), not what is trained.
RESUMABLE_CHANGES = ("trainer",)
# Train settings that change how a step is computed, not what it computes (memory for compute): free on resume too.
HOW_TO_RUN_TRAIN_KEYS = ("grad_checkpointing",)


def model_config(cfg_model: dict, spec: dict) -> ModelConfig:
    """The model config: the `model` group plus the fields the data fixes (task, geometry, vocabulary)."""
    if cfg_model.get("task", spec["task"]) != spec["task"]:
        fix = {"lm": "model=lm", "text": "model=hf model.pretrained=<a BERT directory>"}.get(spec["task"], "model=vit")
        raise ValueError(f"model.task={cfg_model['task']!r} does not fit the data's task {spec['task']!r}; use {fix}")
    return ModelConfig.from_config({**cfg_model, **spec})


def check_checkpoint(path: Path, hparams: dict[str, Any]) -> None:
    """Refuse a corrupt checkpoint or one from another space/model before Lightning tries to restore it."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise ValueError(
            f"cannot resume: checkpoint {path} is unreadable ({type(e).__name__}); delete it or pass resume=false "
            "with another run_name"
        ) from None
    saved = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    for part in ("space", "model", "train", "data"):
        old, new = with_new_defaults(part, saved.get(part)), hparams[part]
        if part == "train" and isinstance(old, dict):
            old = {**old, **{k: new[k] for k in HOW_TO_RUN_TRAIN_KEYS if k in new}}
        if old != new:
            diff = _first_difference(old, new)
            free = [f"{k}.*" for k in RESUMABLE_CHANGES] + [f"train.{k}" for k in HOW_TO_RUN_TRAIN_KEYS]
            raise ValueError(
                f"cannot resume: checkpoint {path} was trained with another {part} config ({part}.{diff}); "
                f"only {', '.join(free)} may change on resume: choose another run_name or revert it"
            )


def with_new_defaults(part: str, saved: Any) -> Any:
    """A checkpoint's `train` or `model` config with the defaults of keys added since it was written: a new key's
    default is what the older code did, so the run resumes unless the key is set to something else now."""
    if not isinstance(saved, dict) or part not in ("train", "model"):
        return saved
    try:
        return resolve_train_config(saved) if part == "train" else ModelConfig.from_config(saved).to_dict()
    except (TypeError, ValueError):  # a key since removed or renamed: compared as saved, so the difference is named
        return saved


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    """Dotted key and both values of the first difference between two nested configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if old.get(k) != new.get(k):
                return _first_difference(old.get(k), new.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.')}: was {old!r}, now {new!r}"


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train per `cfg` into `run_dir`; returns the summary also written to `train_summary.json`."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        dm = instantiate(cfg.data)
    except InstantiationException as e:
        cause = e.__cause__ or e
        raise ValueError(f"cannot build the data module data._target_={cfg.data._target_}: {cause}") from None
    spec = dm.input_spec() if hasattr(dm, "input_spec") else None
    if spec is None:
        raise ValueError(f"data module {cfg.data._target_} has no input_spec(); see README, 'Custom datasets'")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    space_cfg = OmegaConf.to_container(cfg.space, resolve=True)
    train_cfg = OmegaConf.to_container(cfg.train, resolve=True)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    prepared = None
    if "pretrained" in model_cfg:  # model=hf: a pretrained Hugging Face model made elastic (supernet/hf/)
        from supernet.hf.prepare import prepare_pretrained

        def training_batches():
            dm.setup("fit")  # idempotent; Lightning calls it again before fitting
            return dm.train_dataloader()

        if model_cfg.get("depth_drop") == "importance" and train_cfg.get("depth_exits", "none") != "none":
            raise ValueError(
                "train.depth_exits reads shallower depths off one pass, which needs elastic depth to drop the last "
                "layers: use model.depth_drop=last or train.depth_exits=none"
            )
        prepared = prepare_pretrained(model_cfg, space_cfg, spec, training_batches, task_loss)
        space, mcfg = prepared.net.space, prepared.net.config
    else:
        if space_cfg.get("from_pretrained"):
            raise ValueError("space=hf is derived from a pretrained model: use it with model=hf model.pretrained=<dir>")
        space = SearchSpace.from_config(space_cfg)
        mcfg = model_config(model_cfg, spec)
    module = SupernetModule(space.to_dict(), mcfg.to_dict(), train_cfg, data=data_cfg)
    if prepared is not None:
        module.net.load_state_dict(prepared.net.state_dict())
        if module.cfg["teacher"] == "pretrained":
            module.set_pretrained_teacher(prepared.net)
    elif module.cfg["teacher"] == "pretrained":
        raise ValueError(NO_PRETRAINED)

    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    ckpt_path = None
    if last.exists():
        if not cfg.resume:
            raise ValueError(f"{run_dir} already holds a run; pass resume=true to continue it or another run_name")
        check_checkpoint(last, module.hparams)
        ckpt_path = str(last)
    # Written only now: a refused run must not overwrite the config of the run it was refused for.
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    metric = module.metric
    mode = "max" if metric == "acc" else "min"
    ckpt_cb = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=f"val/{metric}/mean",
        mode=mode,
        save_last=True,
        save_top_k=1,
        enable_version_counter=False,
    )
    try:
        trainer = L.Trainer(
            **OmegaConf.to_container(cfg.trainer, resolve=True),
            default_root_dir=str(run_dir),
            logger=CSVLogger(str(run_dir), name="logs"),
            callbacks=[ckpt_cb, LearningRateMonitor(logging_interval="step"), *weight_averaging(module.cfg)],
        )
    except (TypeError, MisconfigurationException) as e:
        raise ValueError(f"bad trainer config: {e}") from None
    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except MisconfigurationException as e:
        raise ValueError(f"bad trainer or data config: {e}") from None
    elapsed = time.perf_counter() - t0

    summary: dict[str, Any] = {}
    if trainer.is_global_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        summary = {
            "run_dir": str(run_dir),
            "task": mcfg.task,
            "space": space.name,
            "space_size": space.size(),
            "sampler": train_cfg["sampler"],
            "global_step": trainer.global_step,
            "epochs": trainer.current_epoch,
            "fit_seconds_this_attempt": round(elapsed, 1),
            "resumed_from": ckpt_path,
            "best_checkpoint": ckpt_cb.best_model_path,
            "best_score": float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None else None,
            "reference_archs": {k: a.key() for k, a in module.eval_archs.items()},
            # What later stages need to rebuild the evaluation data exactly (split, preprocessing).
            "data": {"config": data_cfg, "preprocessing": getattr(dm, "preprocessing", dict)()},
            "val_metrics": metrics,
        }
        if prepared is not None:  # what nas-export needs to write the family back, and how the import ranked units
            summary["pretrained"] = prepared.info
        save_supernet(run_dir, module.net, info=summary)
        rows = merge_metrics(run_dir / "logs", run_dir / "metrics.csv")
        plot_curves(rows, metric, run_dir / "training_curves.png", title=f"{run_dir.name}: {space.name} space")
        (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@hydra.main(config_path=CONF_DIR, config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = run_or_exit("nas-train", lambda: train(cfg, run_dir), (ValueError, FloatingPointError))
    if summary:
        vals = ", ".join(f"{k.removeprefix('val/')}={v:.2f}" for k, v in sorted(summary["val_metrics"].items()))
        print(f"nas-train: {summary['global_step']} steps; validation {vals}")
        print(f"nas-train: supernet artifact at {run_dir / 'supernet.safetensors'}")


if __name__ == "__main__":
    main()
