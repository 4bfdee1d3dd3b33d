"""Train proxyseg: ``python train.py run --config_file=<configs> [--key=value --key#sub=value ...]``.

After every validation the run rewrites ``<ckpt_path>/progress.yaml`` (one entry per validation: epoch,
avg_dice_score, best_avg_dice_score, best_epoch, elapsed_s, and the seconds spent training (train_s) and validating
(val_s) so far), keeps the best weights in ``model.pt`` and, after every epoch, a resumable ``last.pt``; a run
started again on the same ``ckpt_path`` continues from it. It logs to TensorBoard under ``ckpt_path``. ``timing.yaml`` records the fixed start-up cost that
trial-overhead benchmarks read: process and script start, imports done, config parsed (MONAI imported), network
and data loaders built, everything ready (optimiser, TensorBoard), first training step, end.
Launched by ``BundleAlgo.train`` as a plain process (CPU / one GPU) or under torchrun (several GPUs); a long-lived
search worker calls :func:`train` in its own process instead (MONAI imported once for many trials).
"""

from __future__ import annotations

import time

_T_SCRIPT = time.time()  # before the heavy imports: start-up cost is part of every trial's fixed overhead

import importlib.util  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any, Sequence  # noqa: E402

logger = logging.getLogger("proxyseg.train")


def _process_start_time() -> float:
    """Wall-clock start of this process (interpreter start-up included) from /proc; script start elsewhere."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])
        with open("/proc/stat") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        return btime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _T_SCRIPT


def load_pipeline():
    """Import the sibling ``pipeline.py`` by path, under a name unique to this folder."""
    here = os.path.dirname(os.path.abspath(__file__))
    name = "proxyseg_pipeline_" + str(abs(hash(here)))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(here, "pipeline.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _atomic_save(obj: Any, path: str) -> None:
    import torch

    from proxy_bundle.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_yaml(path: str, obj: Any) -> None:
    from proxy_bundle.atomic import write_yaml

    write_yaml(path, obj)


class _Dist:
    """Rank bookkeeping; initialises torch.distributed only when torchrun started several processes."""

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.enabled = self.world_size > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo", init_method="env://")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        import torch.distributed as dist

        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _signature(cfg: dict, pl) -> str:
    """Identity of a run for resuming: everything that shapes training except its length and output places."""
    skip = {"num_epochs", "resume", "ckpt_path", "bundle_root", "cache_dir", "num_workers", "infer"}
    return pl.preprocessing_hash({k: v for k, v in cfg.items() if k not in skip})


def _fill_cache(ds) -> None:
    """Preprocess every case missing from the shared cache, in this process, before DataLoader workers start.

    PersistentDataset writes a case to a temp dir and then moves it into place; a temp dir on the cache's own
    file system makes that move an atomic rename, so concurrent trials never read half a file. The temp dir is
    redirected only here: DataLoader workers keep the system one (their sockets need a short path).
    """
    import tempfile
    from pathlib import Path

    missing = [
        i for i, item in enumerate(ds.data)
        if not (Path(ds.cache_dir) / f"{ds.hash_func(item).decode('utf-8')}{ds.transform_hash}.pt").is_file()
    ]
    if not missing:
        return
    tmp_dir = os.path.join(str(ds.cache_dir), ".tmp")
    os.makedirs(tmp_dir, exist_ok=True)
    saved, tempfile.tempdir = tempfile.tempdir, tmp_dir
    try:
        for i in missing:
            ds[i]
    finally:
        tempfile.tempdir = saved


def _make_loaders(cfg: dict, pl, dist_info: _Dist, train_items: list, val_items: list):
    import torch
    from monai.data import DataLoader, DistributedSampler, PersistentDataset
    from monai.transforms import Compose, RandomizableTrait

    prep = pl.preprocessing(cfg)
    cache_dir = os.path.join(os.path.abspath(str(cfg["cache_dir"])), pl.preprocessing_hash(prep))
    os.makedirs(cache_dir, exist_ok=True)
    det = pl.deterministic_transforms(prep)
    _fill_cache(PersistentDataset(data=train_items + val_items, transform=Compose(det), cache_dir=cache_dir))
    train_xform = Compose(det + pl.train_random_transforms(cfg))
    # Training and validation share cache entries (same case, same key), so both must cache exactly `det`.
    if train_xform.get_index_of_first(lambda t: isinstance(t, RandomizableTrait)) != len(det):
        raise RuntimeError("the training transforms must start with a random transform after preprocessing")
    train_ds = PersistentDataset(data=train_items, transform=train_xform, cache_dir=cache_dir)
    val_ds = PersistentDataset(data=val_items, transform=Compose(det), cache_dir=cache_dir)

    workers = max(0, min(int(cfg["num_workers"]), os.cpu_count() or 1))
    train_sampler = DistributedSampler(train_ds, shuffle=True) if dist_info.enabled else None
    val_sampler = DistributedSampler(val_ds, shuffle=False, even_divisible=False) if dist_info.enabled else None
    generator = torch.Generator()
    generator.manual_seed(int(cfg["seed"]) + dist_info.rank)
    common = {"num_workers": workers, "pin_memory": dist_info.device.type == "cuda", "persistent_workers": workers > 0}
    train_loader = DataLoader(
        train_ds,
        batch_size=int(cfg["batch_size"]),
        shuffle=train_sampler is None,
        sampler=train_sampler,
        generator=generator,
        drop_last=False,
        **common,
    )
    val_loader = DataLoader(val_ds, batch_size=1, shuffle=False, sampler=val_sampler, **common)
    return train_loader, val_loader, train_sampler, cache_dir


def _validate(model, loader, cfg: dict, device, use_amp: bool) -> tuple[float, list[float]]:
    """Mean Dice over foreground classes and validation cases (sliding window at the training ROI), and the
    Dice of each foreground class over the cases (NaN for a class absent from every validation case)."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    n_classes = int(cfg["output_classes"])
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    model.eval()
    with torch.no_grad():
        for batch in loader:
            image = batch["image"].to(device)
            label = batch["label"].to(device)
            with torch.autocast(device_type=device.type, enabled=use_amp):
                logits = sliding_window_inference(
                    image,
                    roi_size=[int(r) for r in cfg["roi_size"]],
                    sw_batch_size=int(cfg["sw_batch_size"]),
                    predictor=model,
                    overlap=float(cfg["sw_overlap"]),
                    mode="gaussian",
                )
            pred = one_hot(torch.argmax(logits.float(), dim=1, keepdim=True), num_classes=n_classes)
            metric(y_pred=pred, y=one_hot(label.long(), num_classes=n_classes))
    per_class = metric.aggregate()  # syncs across ranks when distributed
    metric.reset()
    values = [float(v) for v in per_class.detach().cpu().reshape(-1)]
    present = [v for v in values if math.isfinite(v)]
    return (sum(present) / len(present) if present else 0.0), values


def _class_names(cfg: dict, n_foreground: int) -> list[str]:
    names = cfg.get("class_names")
    if isinstance(names, list) and len(names) == n_foreground and all(isinstance(n, str) for n in names):
        return list(names)
    return [f"class_{k}" for k in range(1, n_foreground + 1)]


def _hparams(cfg: dict, net_name: str, net_kwargs: dict) -> dict:
    """The run's settings as TensorBoard hparams (numbers, strings and bools only)."""
    proxy = cfg.get("proxy") or {}
    out = {
        "learning_rate": float(cfg["learning_rate"]),
        "weight_decay": float(cfg["weight_decay"]),
        "num_epochs": int(cfg["num_epochs"]),
        "batch_size": int(cfg.get("batch_size", 1)),
        "roi_size": "x".join(str(int(r)) for r in cfg["roi_size"]),
        "network": net_name,
        "init_filters": int(net_kwargs.get("init_filters", 0) or 0),
        "fold": int(cfg.get("fold", 0) or 0),
        "proxy_enabled": bool(proxy.get("enabled")),
        "proxy_width": float(proxy.get("width") or 1.0),
        "proxy_blocks": float(proxy.get("blocks") or 1.0),
        "proxy_levels": str(proxy.get("levels")),
    }
    for section in ("loss", "augment"):
        for key, value in (cfg.get(section) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{section}/{key}"] = float(value)
    return out


def run(config_file: str | Sequence[str], **override: Any) -> None:
    """Train one fold with the given configs and ``key=value`` / ``key#sub=value`` overrides."""
    _train(config_file, override)


def train(config_file: str | Sequence[str], override: dict | None = None, on_epoch=None) -> list[dict]:
    """In-process training (one process, one device) for callers that run many trainings in a row.

    ``on_epoch(epoch, entry)`` runs after every epoch with the new ``progress.yaml`` entry (``None`` when the epoch
    did not validate); returning ``True`` stops the training there (its ``last.pt`` is kept, so a later call
    resumes). Returns the validation history.
    """
    return _train(config_file, dict(override or {}), on_epoch, cpu_base=time.process_time(), started=time.time())


def _train(config_file: str | Sequence[str], override: dict, on_epoch=None, cpu_base: float = 0.0,
           started: float | None = None) -> list[dict]:
    """``cpu_base``: process CPU seconds already spent before this training (in a process that trains many);
    ``started``: when this training was called there (its start-up is counted from then, not from the process's)."""
    import torch

    pl = load_pipeline()
    t_imports = time.time()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s proxyseg %(levelname)s %(message)s")

    parser = pl.load_config(config_file, override)
    cfg = pl.settings(parser)
    t_config = time.time()  # MONAI is imported by now
    # The validation gate, before any process group, file or network: one line and exit code 2 for bad data.
    train_items, val_items = pl.split_datalists(cfg)
    from proxy_bundle.validation import gate_cases

    gate_cases(train_items + val_items, labels=range(int(cfg["output_classes"])),
               channels=int(cfg["input_channels"]), where=str(cfg["data_list_file_path"]),
               record_dir=os.path.join(os.path.abspath(str(cfg["cache_dir"])), ".validated"))
    dist_info = _Dist()
    device = dist_info.device
    ckpt_path = str(cfg["ckpt_path"])
    if dist_info.main:
        os.makedirs(ckpt_path, exist_ok=True)

    from monai.utils import set_determinism

    seed = int(cfg["seed"]) + dist_info.rank
    set_determinism(seed=seed, use_deterministic_algorithms=None)
    if cfg.get("deterministic"):
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True

    net_name, net_kwargs = pl.network_spec(cfg)
    pl.check_roi(cfg["roi_size"], pl.network_levels(net_kwargs))
    model = pl.build_network(net_name, net_kwargs).to(device)
    n_params = sum(p.numel() for p in model.parameters())

    train_loader, val_loader, train_sampler, cache_dir = _make_loaders(cfg, pl, dist_info, train_items, val_items)
    t_model = time.time()

    from monai.losses import DeepSupervisionLoss, DiceCELoss
    from monai.optimizers import WarmupCosineSchedule

    loss_fn = DiceCELoss(
        to_onehot_y=True,
        softmax=True,
        lambda_dice=float(cfg["loss"]["dice_weight"]),
        lambda_ce=float(cfg["loss"]["ce_weight"]),
    )
    if net_kwargs.get("dsdepth", 1) > 1:
        loss_fn = DeepSupervisionLoss(loss_fn, weight_mode="exp")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(cfg["learning_rate"]), weight_decay=float(cfg["weight_decay"])
    )
    num_epochs = int(cfg["num_epochs"])
    scheduler = WarmupCosineSchedule(
        optimizer, warmup_steps=int(cfg.get("num_warmup_epochs", 0)), t_total=max(num_epochs, 1), warmup_multiplier=0.1
    )
    use_amp = bool(cfg["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    signature = _signature(cfg, pl)
    last_file = os.path.join(ckpt_path, "last.pt")
    history: list[dict] = []
    best, best_epoch, start_epoch, elapsed_before = -1.0, -1, 0, 0.0
    train_s, val_s = 0.0, 0.0
    if cfg.get("resume", True) and os.path.isfile(last_file):
        state = torch.load(last_file, map_location=device, weights_only=False)
        if state.get("signature") == signature:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            # The restored schedule keeps the old length; a run extended to more epochs decays over the new one.
            scheduler.t_total = max(num_epochs, 1)
            scaler.load_state_dict(state["scaler"])
            history = list(state["history"])
            best, best_epoch = float(state["best"]), int(state["best_epoch"])
            start_epoch, elapsed_before = int(state["epoch"]), float(state["elapsed_s"])
            train_s, val_s = float(state.get("train_s", 0.0)), float(state.get("val_s", 0.0))
            if dist_info.main:
                logger.info("resuming %s at epoch %d (best %.4f at %d)", ckpt_path, start_epoch, best, best_epoch)
        elif dist_info.main:
            logger.info("%s belongs to a different run; starting afresh", last_file)
    if start_epoch == 0 and dist_info.main and os.path.isfile(os.path.join(ckpt_path, "progress.yaml")):
        os.remove(os.path.join(ckpt_path, "progress.yaml"))  # another run's history must not be read as ours

    if dist_info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    raw_model = model.module if dist_info.enabled else model

    writer = None
    if dist_info.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=ckpt_path)
        logger.info(
            "%s %s: %d parameters, %d training / %d validation cases, proxy=%s, cache %s",
            ckpt_path,
            net_name,
            n_params,
            len(train_items),
            len(val_items),
            bool((cfg.get("proxy") or {}).get("enabled")),
            cache_dir,
        )

    timing = {
        "process_start": _process_start_time() if started is None else started,
        "script_start": _T_SCRIPT if started is None else started,
        "in_process": started is not None,
        "imports_done": t_imports,
        "config_ready": t_config,
        "model_ready": t_model,
        "data_ready": time.time(),
        # Process CPU seconds (all threads): a cost that does not depend on what else the machine runs.
        "cpu_data_ready": time.process_time() - cpu_base,
        "device": device.type,
        "first_step": None,
        "end": None,
        "epochs_run": 0,
        "num_train_cases": len(train_items),
        "num_val_cases": len(val_items),
        "num_parameters": n_params,
    }
    t_run = time.time()
    every = max(1, int(cfg["num_epochs_per_validation"]))
    record = {
        "name": net_name,
        "kwargs": net_kwargs,
        "preprocessing": pl.preprocessing(cfg),
        "roi_size": [int(r) for r in cfg["roi_size"]],
        "output_classes": int(cfg["output_classes"]),
        "sw_batch_size": int(cfg["sw_batch_size"]),
        "sw_overlap": float(cfg["sw_overlap"]),
    }

    resumed_from = start_epoch
    stop = False
    for epoch in range(start_epoch, num_epochs):
        t_epoch = time.time()
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        model.train()
        epoch_loss, steps = 0.0, 0
        for batch in train_loader:
            if timing["first_step"] is None:
                timing["first_step"] = time.time()
            image = batch["image"].to(device, non_blocking=True)
            label = batch["label"].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, enabled=use_amp):
                loss = loss_fn(model(image), label)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            epoch_loss += float(loss.detach())
            steps += 1
        scheduler.step()
        timing["epochs_run"] += 1
        if writer is not None:
            writer.add_scalar("train/loss", epoch_loss / max(steps, 1), epoch + 1)
            writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], epoch + 1)

        train_s += time.time() - t_epoch
        entry = None
        if (epoch + 1) % every == 0 or epoch + 1 == num_epochs:
            entry, best, best_epoch, val_s, per_class = _validate_epoch(
                model, raw_model, val_loader, cfg, device, use_amp, epoch, best, best_epoch, val_s, record,
                dist_info, ckpt_path)
            entry.update(elapsed_s=round(elapsed_before + time.time() - t_run, 3), train_s=round(train_s, 3),
                         val_s=round(val_s, 3), resumed_from_epoch=resumed_from,
                         cpu_s=round(time.process_time() - cpu_base, 3))
            history.append(entry)
            if writer is not None:
                writer.add_scalar("val/avg_dice", entry["avg_dice_score"], epoch + 1)
                for name, value in zip(_class_names(cfg, len(per_class)), per_class):
                    if math.isfinite(value):
                        writer.add_scalar(f"val/dice/{name}", value, epoch + 1)
                logger.info("epoch %d/%d loss %.4f dice %.4f best %.4f (epoch %d)", epoch + 1, num_epochs,
                            epoch_loss / max(steps, 1), entry["avg_dice_score"], best, best_epoch)
        if dist_info.main:
            _atomic_save(
                {
                    "model": raw_model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "history": history,
                    "best": best,
                    "best_epoch": best_epoch,
                    "epoch": epoch + 1,
                    "elapsed_s": elapsed_before + time.time() - t_run,
                    "train_s": train_s,
                    "val_s": val_s,
                    "signature": signature,
                },
                last_file,
            )
            if entry is not None:
                # progress.yaml last: a reader that sees an entry can rely on model.pt / last.pt matching it.
                _write_yaml(os.path.join(ckpt_path, "progress.yaml"), history)
        if on_epoch is not None and on_epoch(epoch + 1, entry):
            stop = True
            break

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timing["end"] = time.time()
    timing["cpu_end"] = time.process_time() - cpu_base
    timing["train_s"], timing["val_s"], timing["stopped_early"] = train_s, val_s, stop
    if dist_info.main:
        # hparams next to the scalars (run_name "."), so TensorBoard's HPARAMS tab compares trials side by side.
        writer.add_hparams(_hparams(cfg, net_name, net_kwargs),
                           {"hparam/best_avg_dice": max(best, 0.0), "hparam/best_epoch": float(best_epoch)},
                           run_name=".")
        writer.close()
        _write_yaml(os.path.join(ckpt_path, "timing.yaml"), timing)
    dist_info.close()
    return history


def _validate_epoch(model, raw_model, val_loader, cfg, device, use_amp, epoch, best, best_epoch, val_s, record,
                    dist_info, ckpt_path):
    """Validate after ``epoch`` (0-based), keep the best weights; returns (entry, best, best_epoch, val_s,
    per-class Dice)."""
    t_val = time.time()
    dice, per_class = _validate(model, val_loader, cfg, device, use_amp)
    if not math.isfinite(dice):
        dice = 0.0
    if dice > best:
        best, best_epoch = dice, epoch + 1
        if dist_info.main:
            _atomic_save(
                {"state_dict": raw_model.state_dict(), "network": record, "epoch": epoch + 1, "best_metric": best},
                os.path.join(ckpt_path, "model.pt"),
            )
    val_s += time.time() - t_val
    entry = {"epoch": epoch + 1, "avg_dice_score": round(dice, 6), "best_avg_dice_score": round(best, 6),
             "best_epoch": best_epoch}
    return entry, best, best_epoch, val_s, per_class


def _main() -> None:
    import fire

    from proxy_bundle.errors import ProxyBundleError

    try:
        fire.Fire({"run": run})
    except (load_pipeline().ConfigError, ProxyBundleError, FileNotFoundError) as err:
        # Bad settings or inputs: one line naming the key or file, no traceback.
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    _main()
