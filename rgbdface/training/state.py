"""Checkpoints that resume exactly, in safetensors + JSON only (nothing is pickled).

    RUN_DIR/checkpoints/step-00000500/
      model/                   the whole model folder (RGBDFaceModel.save_pretrained), float32
      optimizer.safetensors    AdamW state tensors, keyed "<param index>.<name>" (exp_avg, exp_avg_sq, step)
      optimizer.json           parameter names in optimizer order, param_groups, non-tensor state
      scheduler.json           the lr scheduler's state_dict
      ema.safetensors          EMA weights by parameter name (with optim.ema)
      scaler.json              fp16 runs: the gradient scaler's loss scale and growth tracker
      rng-<rank>.safetensors   torch CPU (and CUDA) generator states of each process
      rng-<rank>.json          Python's and NumPy's generator states of each process
      state.json               step, micro-batches and samples consumed (the data-order state), digests
      config.json              the resolved RunConfig

A checkpoint is written into a hidden temporary folder and renamed into place when
complete, so a folder named step-* is always whole. Data order needs no more than the
step: every draw for sample n is a function of (seed, n) (see data.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from rgbdface.models.folder import safetensors_problem
from rgbdface.utils import InputError

CHECKPOINTS = "checkpoints"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    micro_batches: int = 0  # micro-batches consumed per process (= step * grad_accum)
    samples_seen: int = 0  # samples (stage 3: clips) consumed by all processes together
    world_size: int = 1  # processes that trained up to here
    stage: int = 1
    init_model: str = ""  # where the run's starting model came from
    dataset: str = ""
    last_loss: float | None = None
    digests: list[str] = field(default_factory=list)  # per process: hash of the trained weights at this step


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def discard(folder: Path) -> None:
    """Remove a folder so that a kill midway leaves no half of it under its name: rename, then delete.

    The hidden `.NAME.trash` left by a kill is swept by the next run (`sweep_leftovers`).
    """
    trash = folder.with_name(f".{folder.name}.trash")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ----------------------------------------------------------------------------- damaged checkpoints
REQUIRED_FILES = ("state.json", "config.json", "optimizer.json", "optimizer.safetensors", "scheduler.json",
                  "rng-0.json", "rng-0.safetensors", "model/rgbdface.json")


def checkpoint_problem(ckpt: Path) -> str | None:
    """What is wrong with a checkpoint folder (a missing file, invalid JSON, a cut safetensors file), or None.

    A fast check of every file's structure (headers and sizes, not the tensor bytes), so that
    resuming never stops on a raw library error from a checkpoint cut by a crash or a full disk.
    """
    for name in REQUIRED_FILES:
        if not (ckpt / name).is_file():
            return f"no {name}"
    for path in sorted(ckpt.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(ckpt)
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                why = safetensors_problem(path)
                if why:
                    return f"{rel} is {why}"
        except (ValueError, OSError):
            return f"{rel} is not valid JSON"
    state = json.loads((ckpt / "state.json").read_text())
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return "state.json has no step"
    return None


def newest_valid_checkpoint(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest whole checkpoint of a run, and the newer ones that are damaged (with what is wrong)."""
    damaged = []
    for ckpt in reversed(list_checkpoints(run_dir)):
        why = checkpoint_problem(ckpt)
        if why is None:
            return ckpt, damaged
        damaged.append((ckpt, why))
    return None, damaged


def set_aside(ckpt: Path) -> Path:
    """Rename a damaged checkpoint out of the run's way (kept for inspection, never resumed or pruned)."""
    target = ckpt.with_name(f"damaged-{ckpt.name}")
    if target.exists():
        shutil.rmtree(target)
    os.replace(ckpt, target)
    return target


# ----------------------------------------------------------------------------- the run folder
LOCK = ".lock"


def lock_run(run_dir: Path):
    """Hold RUN_DIR/.lock (an exclusive advisory lock) until the returned file is closed or the process ends.

    Two trainers in one run folder would interleave their log and checkpoints: the second stops here.
    The lock goes with the process, so a killed run never leaves a stale one.
    """
    import fcntl

    f = open(Path(run_dir) / LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise InputError(f"{run_dir}: another training process (pid {holder}) is using this run folder; "
                         "wait for it to end or choose another -o") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def prepare_run_dir(run_dir: Path, fresh: bool = False, damaged: list[Path] = ()) -> None:
    """Before training, holding the lock: sweep a killed run's leftovers; set damaged checkpoints aside;
    with `fresh` (--overwrite), remove the earlier run's checkpoints, log and samples (its model/ is
    replaced at the end)."""
    import logging

    log = logging.getLogger("rgbdface.training")
    gone = sweep_leftovers(run_dir)
    if gone:
        log.info("removed %d leftovers of an interrupted run: %s", len(gone), ", ".join(p.name for p in gone[:3]) + (" ..." if len(gone) > 3 else ""))
    for ckpt in damaged:
        log.warning("warning: set the damaged %s aside as %s", ckpt.name, set_aside(ckpt).name)
    if fresh:
        for name in (CHECKPOINTS, "samples"):
            if (Path(run_dir) / name).is_dir():
                discard(Path(run_dir) / name)
        (Path(run_dir) / "log.jsonl").unlink(missing_ok=True)


# ----------------------------------------------------------------------------- leftovers of killed runs
def sweep_leftovers(run_dir: Path) -> list[Path]:
    """Remove what a killed run leaves behind (call only while holding the run's lock); returns what went.

    Hidden temporaries of atomic writes (`.model.*.tmp/`, `.step-*.tmp/`, `.NAME.*.tmp.EXT`), folders
    half deleted by pruning (`.step-*.trash`, `step-*` without state.json), and `.model.old` once model/
    is back (a kill between the two renames of a model save leaves the old model there: it is restored).
    """
    run_dir = Path(run_dir)
    gone: list[Path] = []
    old, model = run_dir / ".model.old", run_dir / "model"
    if old.is_dir() and not model.exists():
        os.replace(old, model)
    ckpts = run_dir / CHECKPOINTS
    candidates = [p for d in (run_dir, ckpts, run_dir / "samples") if d.is_dir() for p in d.iterdir()
                  if p.name.startswith(".") and (".tmp" in p.name or p.name.endswith((".trash", ".old")))]
    if ckpts.is_dir():
        candidates += [p for p in ckpts.glob("step-*") if p.is_dir() and not (p / "state.json").is_file()]
    for p in sorted(candidates):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        gone.append(p)
    return gone


# ----------------------------------------------------------------------------- optimizer
def optimizer_to_files(optimizer: torch.optim.Optimizer, names: list[str]) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    meta = {"names": names, "param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def optimizer_from_files(optimizer: torch.optim.Optimizer, names: list[str], tensors: dict, meta: dict) -> None:
    if meta["names"] != names:
        raise InputError("the checkpoint's trainable parameters differ from this run's; resume with the same stage and settings")
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ----------------------------------------------------------------------------- RNG
def rng_to_files() -> tuple[dict, dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pstate, pgauss = random.getstate()
    meta = {"numpy": {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "state": list(pstate), "gauss": pgauss}}
    return tensors, meta


def rng_from_files(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    n = meta["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = meta["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# ----------------------------------------------------------------------------- save / load
def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_jsonable))


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, torch.Tensor):
        return v.tolist()
    raise TypeError(f"not JSON-serialisable: {type(v).__name__}")


def save_checkpoint(accelerator, run_dir: Path, model, optimizer, names: list[str], lr_scheduler, ema, state: TrainState,
                    config: dict, keep: int = 0) -> Path:
    """Write step-<state.step> atomically; every process calls this (each writes its own RNG state)."""
    final = checkpoint_dir(run_dir, state.step)
    tmp = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()

    try:
        _write_checkpoint(accelerator, tmp, model, optimizer, names, lr_scheduler, ema, state, config)
    except BaseException:  # an error, Ctrl-C or SIGTERM: nothing half-written stays behind
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise

    # 3. Main process: the rename that publishes it, then pruning
    if accelerator.is_main_process:
        if final.exists():
            discard(final)
        os.replace(tmp, final)
        if keep:
            for old in list_checkpoints(run_dir)[:-keep]:
                discard(old)
    accelerator.wait_for_everyone()
    return final


def _write_checkpoint(accelerator, tmp: Path, model, optimizer, names, lr_scheduler, ema, state: TrainState, config: dict) -> None:
    from safetensors.torch import save_file

    # 1. Every process: its own generator states
    rank = accelerator.process_index
    tensors, meta = rng_to_files()
    save_file(tensors, str(tmp / f"rng-{rank}.safetensors"))
    _write_json(tmp / f"rng-{rank}.json", meta)
    accelerator.wait_for_everyone()

    # 2. Main process: model, optimizer, scheduler, EMA, state
    if accelerator.is_main_process:
        model.save_pretrained(tmp / "model")
        o_tensors, o_meta = optimizer_to_files(optimizer, names)
        save_file(o_tensors, str(tmp / "optimizer.safetensors"))
        _write_json(tmp / "optimizer.json", o_meta)
        _write_json(tmp / "scheduler.json", {k: v for k, v in lr_scheduler.state_dict().items() if k != "lr_lambdas"})
        if ema is not None:
            save_file({n: t.detach().cpu().contiguous() for n, t in ema.shadow.items()}, str(tmp / "ema.safetensors"))
        scaler = getattr(accelerator, "scaler", None)
        if scaler is not None and scaler.is_enabled():  # fp16: without it a resumed run starts its loss scale over
            _write_json(tmp / "scaler.json", scaler.state_dict())
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "state.json", asdict(state))


def read_state(ckpt: Path) -> tuple[TrainState, dict]:
    state = json.loads((ckpt / "state.json").read_text())
    known = set(TrainState.__dataclass_fields__)
    return TrainState(**{k: v for k, v in state.items() if k in known}), json.loads((ckpt / "config.json").read_text())


def load_training_state(ckpt: Path, optimizer, names: list[str], lr_scheduler, ema, rank: int, scaler=None) -> None:
    """Restore optimizer, lr scheduler, EMA, the fp16 gradient scaler and this process's RNG from a checkpoint
    (the model is loaded separately)."""
    from safetensors.torch import load_file

    optimizer_from_files(optimizer, names, load_file(str(ckpt / "optimizer.safetensors")),
                         json.loads((ckpt / "optimizer.json").read_text()))
    sched = json.loads((ckpt / "scheduler.json").read_text())
    lr_scheduler.load_state_dict({**lr_scheduler.state_dict(), **sched})
    if ema is not None:
        path = ckpt / "ema.safetensors"
        if path.is_file():
            ema.load(load_file(str(path)))
    if scaler is not None and scaler.is_enabled() and (ckpt / "scaler.json").is_file():
        scaler.load_state_dict(json.loads((ckpt / "scaler.json").read_text()))
    rng = ckpt / f"rng-{rank}.safetensors"
    if not rng.is_file():  # more processes than the run that wrote it: take the main process's
        rng = ckpt / "rng-0.safetensors"
    rng_from_files(load_file(str(rng)), json.loads(rng.with_suffix(".json").read_text()))
