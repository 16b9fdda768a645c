"""What a seed draws, and whether another experiment in the same storage already drew the same.

A trial's seed always draws its initialisation and data order. Its augmented views come from the seed too,
except with a teacher-logit cache, whose views are fixed by `teacher_cache.seed` for every trial; its
validation split comes from `data.split_seed` (default `data.seed`). `per_seed: [views, split]` in an ablation
or a confirmation makes each seed draw those afresh as well (one logit cache per seed).

Two trials with the same seed, data, split, views and teacher are not independent: re-running a setting under
them reproduces the first run rather than replicating it. Every experiment records its draws in its storage
folder (`draws.json`); an ablation or confirmation whose seeds repeat another experiment's draws is refused
before anything trains, unless it says `allow_shared_seeds: true`, and then its table says so.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow.fs as pafs

from bickd.config import TrainConfig
from bickd.config_io import ConfigError
from bickd.teacher_cache import state_hash
from bickd_tune.experiment import ExperimentConfig, SeededRuns
from bickd_tune.paths import ExperimentPaths
from bickd_tune.storage import Storage, join

DRAWS_FILE = "draws.json"  # in each experiment's storage folder


def seed_overrides(base: TrainConfig, seed: int, per_seed: list[str]) -> dict[str, Any]:
    """The overrides that make a trial at `seed` draw what `per_seed` names afresh (its cache path is set by
    the platform once that seed's cache exists)."""
    overrides: dict[str, Any] = {"seed": seed}
    if "views" in per_seed and base.teacher_cache.enabled:
        overrides["teacher_cache.seed"] = seed
    if "split" in per_seed:
        overrides["data.split_seed"] = seed
    return overrides


def draw_of(config: TrainConfig) -> dict[str, Any]:
    """Everything random a trial shares with another trial of the same draw (the teacher apart)."""
    cache = config.teacher_cache
    data = config.data.model_dump(mode="json", exclude={"root", "download", "split_seed"})
    data["split_seed"] = config.data.seed if config.data.split_seed is None else config.data.split_seed
    views = {"cache_seed": cache.seed, "cache_epochs": cache.epochs} if cache.enabled else {"seed": config.seed}
    return {"seed": config.seed, "data": data, "views": views}


def teacher_ids(experiment: ExperimentConfig, weights: dict | None = None) -> list[str]:
    """Names of the teacher: its weights' hash where known, and the recipe that trains it when it is trained
    here (the same recipe trains the same weights)."""
    if experiment.teacher is None:
        return ["none"]
    ids = []
    if weights is not None:
        ids.append(f"weights:{state_hash(weights)}")
    if experiment.teacher.checkpoint is None:
        recipe = experiment.base_train_config().teacher_training_config().train_dict()
        recipe["data"].pop("root", None)
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
        ids.append(f"trained:{digest}")
    return ids


def planned_draws(experiment: ExperimentConfig) -> dict[str, list[dict[str, Any]]]:
    """Stage -> the draws its trials will use: the search's seeds, every ablation or confirmation seed."""
    base = experiment.base_train_config()
    stages: dict[str, tuple[list[int], list[str]]] = {}
    if experiment.search is not None:
        stages["search"] = (experiment.search_seeds, [])
    for name, section in (("ablation", experiment.ablation), ("confirm", experiment.confirm)):
        if section is not None:
            stages[name] = (list(section.seeds), list(section.per_seed))
    return {stage: [draw_of(base.with_overrides(seed_overrides(base, seed, per_seed))) for seed in seeds]
            for stage, (seeds, per_seed) in stages.items()}


def other_records(paths: ExperimentPaths) -> dict[str, dict[str, Any]]:
    """Experiment name -> its draws record, for every other experiment in the same storage."""
    root = Storage(paths.storage_root)
    try:
        entries = root.fs.get_file_info(pafs.FileSelector(root.root, allow_not_found=True))
    except OSError:
        return {}
    records = {}
    for entry in entries:
        if entry.type != pafs.FileType.Directory or entry.base_name == paths.name:
            continue
        folder = Storage(join(paths.storage_root, entry.base_name))
        if folder.exists(DRAWS_FILE):
            records[entry.base_name] = folder.read_json(DRAWS_FILE)
    return records


def shared_with(experiment: ExperimentConfig, paths: ExperimentPaths, ids: list[str]) -> dict[str, dict[str, list[int]]]:
    """Claim stage (ablation, confirm) -> other experiment -> the seeds whose draws (and teacher) it shares."""
    planned = planned_draws(experiment)
    found: dict[str, dict[str, list[int]]] = {}
    for other, record in other_records(paths).items():
        if not set(ids) & set(record.get("teacher", [])):
            continue
        theirs = {json.dumps(d, sort_keys=True) for draws in record.get("stages", {}).values() for d in draws}
        for stage in ("ablation", "confirm"):
            seeds = sorted(d["seed"] for d in planned.get(stage, []) if json.dumps(d, sort_keys=True) in theirs)
            if seeds:
                found.setdefault(stage, {})[other] = seeds
    return found


def check_independent(experiment: ExperimentConfig, paths: ExperimentPaths, ids: list[str]) -> dict[str, list[str]]:
    """Refuses an ablation or confirmation whose seeds repeat another experiment's draws (same data, split,
    views and teacher) unless it allows shared seeds; returns stage -> the experiments it shares seeds with."""
    shared = shared_with(experiment, paths, ids)
    for stage, others in shared.items():
        section: SeededRuns = experiment.ablation if stage == "ablation" else experiment.confirm
        if section.allow_shared_seeds:
            continue
        field = "ablation" if stage == "ablation" else "confirm"
        named = "; ".join(f"seed(s) {seeds} by '{other}'" for other, seeds in sorted(others.items()))
        raise ConfigError(
            f"{field}.seeds: {named} in {paths.storage_root} were already trained with the same data, split, views "
            f"and teacher, so these runs would repeat them, not replicate them; use other seeds, draw the views or "
            f"the split per seed ({field}.per_seed: [views, split]), or set {field}.allow_shared_seeds: true (the "
            "table then says the seeds are shared)")
    return {stage: sorted(others) for stage, others in shared.items()}


def write_record(experiment: ExperimentConfig, paths: ExperimentPaths, ids: list[str],
                 shared: dict[str, list[str]]) -> None:
    """This experiment's draws, its teacher's names and what it shares, into its storage folder."""
    storage = paths.storage()
    known = storage.read_json(DRAWS_FILE) if storage.exists(DRAWS_FILE) else {}
    storage.write_json(DRAWS_FILE, {
        "experiment": experiment.name, "teacher": sorted(set(known.get("teacher", [])) | set(ids)),
        "stages": planned_draws(experiment), "shared_with": {**known.get("shared_with", {}), **shared}})


def shared_draws(paths: ExperimentPaths, section: str) -> list[str]:
    """The other experiments whose draws a stage (ablation, confirm) shares, as recorded at its start."""
    storage = paths.storage()
    return storage.read_json(DRAWS_FILE).get("shared_with", {}).get(section, []) if storage.exists(DRAWS_FILE) else []
