"""The experiment YAML: a `TrainConfig` (what one trial trains) plus how to search, schedule, place and
track the trials. Validated completely before anything starts; errors name the field (see bickd.config_io).
"""
from __future__ import annotations

import builtins
import json
import os
import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from bickd.config import TrainConfig, apply_overrides
from bickd.config_io import ConfigError, describe, read_yaml, validate
from bickd.data.registry import val_fraction_of
from bickd.losses import LOSSES
from bickd.names import did_you_mean
from bickd.schema import StrictModel
from bickd_tune.statistics import pair_key, parse_comparison
from bickd_tune.storage import REMOTE_SCHEMES

Scalar = int | float | str | bool | None
# What a search may choose on, and which way is better. All are validation metrics: the test split is
# measured on each trial's final model and never used to choose anything.
OBJECTIVES = {"val/top1": "max", "val/top5": "max", "val/loss": "min"}


class SearchParam(StrictModel):
    """One searched parameter: exactly one distribution, optionally sampled only `when` others match."""
    uniform: tuple[float, float] | None = Field(None, description="[low, high]")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], sampled on a log scale (low > 0)")
    # `builtins.int`: inside this class body the name `int` is the field below, not the type
    int: tuple[builtins.int, builtins.int] | None = Field(None, description="[low, high], integers, both included")
    choice: list[Scalar] | None = Field(None, description="the values to choose from")
    step: float | None = Field(None, gt=0, description="quantisation step of uniform / int")
    when: dict[str, Scalar | list[Scalar]] | None = Field(
        None, description="sample only when these earlier parameters take these values")

    @model_validator(mode="after")
    def _one_distribution(self) -> SearchParam:
        kinds = [k for k in ("uniform", "loguniform", "int", "choice") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of uniform, loguniform, int, choice (got {kinds or 'none'})")
        kind = kinds[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice: needs at least one value")
        else:
            low, high = getattr(self, kind)
            if not low < high:
                raise ValueError(f"{kind}: range [{low}, {high}] is empty or inverted (need low < high)")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform: low must be > 0 (got {low})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("uniform", "loguniform", "int", "choice") if getattr(self, k) is not None)

    def midpoint(self) -> Any:
        """A value inside the range, used to check that the parameter can be applied to the config."""
        if self.choice is not None:
            return self.choice[0]
        low, high = getattr(self, self.kind)
        return low if self.kind == "int" else (low * high) ** 0.5 if self.kind == "loguniform" else (low + high) / 2


class SearchConfig(StrictModel):
    num_samples: int = Field(8, ge=1, description="trials to run")
    seed: int = Field(0, ge=0, description="seed of the Optuna sampler")
    sampler: Literal["tpe", "random", "gp", "qmc"] = Field("tpe", description="Optuna's sampler")
    metric: str = Field("val/top1", description=f"the objective: one of {', '.join(OBJECTIVES)} (validation "
                        "metrics; Optuna, ASHA, the summary and the report all choose by it)")
    mode: Literal["max", "min"] | None = Field(None, description="better direction (default: the metric's own)")
    space: dict[str, SearchParam] = Field(default_factory=dict, description="dotted config path -> its distribution, "
                                          "in order (a `when` may name only earlier parameters)")
    points_to_evaluate: list[dict[str, Scalar]] = Field(
        default_factory=list, description="first trials, e.g. the method's defaults")

    @field_validator("metric")
    @classmethod
    def _chosen_on_validation(cls, metric: str) -> str:
        if metric in OBJECTIVES:
            return metric
        if metric.startswith("test/"):
            raise ValueError(f"'{metric}' is a test-set metric: a winner chosen on test overstates its own test "
                             f"score. Choose on validation: {', '.join(OBJECTIVES)}")
        raise ValueError(f"unknown metric '{metric}'{did_you_mean(metric, OBJECTIVES)}; allowed: {', '.join(OBJECTIVES)}")

    @property
    def goal(self) -> str:
        """max or min: the mode given, else the metric's own direction."""
        return self.mode or OBJECTIVES[self.metric]

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        if self.mode is not None and self.mode != OBJECTIVES[self.metric]:
            raise ValueError(f"mode {self.mode} with metric {self.metric} would choose the worst trial: "
                             f"{self.metric} is better when {'higher' if OBJECTIVES[self.metric] == 'max' else 'lower'} "
                             f"(mode {OBJECTIVES[self.metric]}, the default)")
        names = list(self.space)
        for position, (name, param) in enumerate(self.space.items()):
            for other in param.when or {}:
                if other not in names[:position]:
                    raise ValueError(f"space.{name}.when names '{other}', which is not a parameter listed "
                                     f"before it; conditions may name: {', '.join(names[:position]) or 'nothing'}")
        for point in self.points_to_evaluate:
            unknown = sorted(set(point) - set(names))
            if unknown:
                raise ValueError(f"points_to_evaluate names {unknown}, not in space ({', '.join(names)})")
        return self


class SchedulerConfig(StrictModel):
    type: Literal["asha", "none"] = Field("asha", description="ASHA early stopping on the search's metric, or none")
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="epochs of the longest trial (default: recipe.epochs)")


# What a seed can draw afresh besides initialisation and data order (which every seed draws).
SEED_DRAWS = {
    "views": "the augmented views (with a teacher-logit cache: one cache per seed; without: live augmentation)",
    "split": "the validation split (data.split_seed = the seed; the test split is never touched)",
}


def drawn_per_seed(base: TrainConfig, per_seed: list[str]) -> list[str]:
    """What each seed draws beyond initialisation and order: `per_seed`, and always the views without a logit
    cache (live augmentation follows the run's seed)."""
    return [d for d in SEED_DRAWS if d in per_seed or (d == "views" and not base.teacher_cache.enabled)]


def varied_and_shared(drawn: list[str]) -> tuple[list[str], list[str]]:
    """(what each seed draws, what every seed shares) in runs whose seeds draw `drawn` (drawn_per_seed), named
    for a reader: the plan's seeds line and the tables' seeds note."""
    named = {draw: SEED_DRAWS[draw].split(" (")[0] for draw in SEED_DRAWS}
    return (["initialisation", "data order", *(named[draw] for draw in drawn)],
            [named[draw] for draw in SEED_DRAWS if draw not in drawn])


class SeededRuns(StrictModel):
    """What the ablation and the confirmation share: seeds, what each seed draws, and whether a seed another
    experiment already trained with the same draws may be used again."""
    per_seed: list[Literal["views", "split"]] = Field(
        default_factory=list, description="what each seed draws afresh besides initialisation and data order: "
        + "; ".join(f"{k}: {v}" for k, v in SEED_DRAWS.items()) + ". Empty: every seed trains on the same views "
        "and split, so only initialisation and order vary")
    allow_shared_seeds: bool = Field(
        False, description="allow a seed that another experiment in the same storage trained with the same data, "
        "split, views and teacher (its runs are then not independent of that experiment's; the table says so)")

    @field_validator("per_seed")
    @classmethod
    def _once_each(cls, draws: list[str]) -> list[str]:
        if len(set(draws)) != len(draws):
            raise ValueError(f"per_seed {draws} names a draw twice")
        return draws


class AblationConfig(SeededRuns):
    arms: dict[str, dict[str, Any]] = Field(description="arm name -> overrides of the base config")
    seeds: list[int] = Field(min_length=1, description="every arm runs once per seed")
    reference: str = Field("full", description="the arm the others are compared with")
    control: str | None = Field("kd_only", description="the KD arm, for a second comparison")

    @model_validator(mode="after")
    def _arms_named(self) -> AblationConfig:
        if not self.arms:
            raise ValueError("arms: give at least one arm")
        for role in ("reference", "control"):
            name = getattr(self, role)
            if name is not None and name not in self.arms:
                raise ValueError(f"{role} '{name}' is not an arm; arms: {', '.join(self.arms)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} repeat a seed")
        return self


class ConfirmConfig(SeededRuns):
    """After a search: its best settings, the control and the method's default, each over fresh seeds at the
    full recipe (no early stopping), compared with the control and the winners with the reference (paired
    t-tests on the shared seeds, Holm-corrected within their family)."""
    top_k: int = Field(2, ge=1, description="how many of the search's best distinct settings (by its objective) "
                       "to confirm")
    seeds: list[int] = Field(min_length=2, description="fresh seeds every setting trains with; none may be a seed "
                             "the search trained with")
    arms: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"defaults": {}}, description="settings trained beside the winners: name -> "
        "overrides of the base config ({} is the YAML's own setting, the method's default, which is added as "
        "`defaults` when no arm trains it)")
    control: str = Field(description="the arm every other setting is compared with, e.g. KD at its defaults")
    reference: str | None = Field(
        None, description="the arm each of the search's winners is also compared with (default: the one that "
        "trains the YAML's own setting, the method's default): is the searched setting better than the default?")

    @model_validator(mode="after")
    def _arms_named(self) -> ConfirmConfig:
        for role in ("control", "reference"):
            name = getattr(self, role)
            if name is not None and name not in self.arms:
                raise ValueError(f"{role} '{name}' is not an arm{did_you_mean(name, self.arms)}; "
                                 f"arms: {', '.join(self.arms) or 'none'}")
        reserved = [name for name in self.arms if re.fullmatch(r"top\d+", name)]
        if reserved:
            raise ValueError(f"arms {reserved}: names top1, top2, ... are the search's winners; rename them")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} repeat a seed")
        return self


class AnalysisConfig(StrictModel):
    """How the ablation and confirmation tables compare arms (bickd_tune/statistics.py)."""
    primary: list[str] = Field(
        default_factory=list, description="comparisons declared before any trial runs, each '<arm> vs <arm>' "
        "and one the table makes (an arm against the reference or the control; a winner against the reference); "
        "Holm-corrected among themselves, every other comparison as a separate exploratory family. Empty: one "
        "family of every comparison shown")
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level of the verdicts, on Holm-adjusted p")
    power: float = Field(0.8, gt=0, lt=1, description="the power at which each comparison's detectable effect "
                         "and the seeds an observed effect needs are stated")
    effect_of_interest: float = Field(
        1.0, gt=0, description="points of top-1 below which a difference would not matter: \"no difference\" is "
        "only said when the test could have detected this much; otherwise the comparison is inconclusive")

    @field_validator("primary")
    @classmethod
    def _comparisons(cls, primary: list[str]) -> list[str]:
        pairs = [pair_key(*parse_comparison(text)) for text in primary]
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"primary {primary} declares a comparison twice")
        return primary


class ResourcesConfig(StrictModel):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0, description="fractions pack several trials on one GPU")
    num_workers: int = Field(0, ge=0, description="0: train inside the Tune trial; N: TorchTrainer with N DDP workers")
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0, description="restarts of a failed trial from its last checkpoint")
    teacher_cpus: float | None = Field(
        None, gt=0, description="CPUs of the teacher stage (its training, evaluation and logit caches), which runs "
        "alone before the trials; default: every CPU of the local instance, or on a joined cluster one trial's CPUs "
        "scaled to a whole GPU. The teacher's torch threads follow it")
    custom_resources: dict[str, float] = Field(
        default_factory=dict, description="extra Ray resources per trial (per DDP worker with num_workers >= 1), "
        "e.g. {gpu1: 0.5}: steers trials to the node type that advertises them (cluster/README.md)")
    coordinator_resources: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 0, "coordinator": 1}, description="what the Tune trial that drives a "
        "TorchTrainer (num_workers >= 1) asks for: by default a `coordinator` slot, which the heads of cluster/*.yaml "
        "and the platform's own local instance advertise (so the driver never starts a GPU node of its own); on a "
        "cluster whose head lacks it, e.g. {CPU: 0.5}")

    @field_validator("custom_resources", "coordinator_resources")
    @classmethod
    def _non_negative(cls, resources: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in resources.items() if v < 0}
        if bad:
            raise ValueError(f"resource amounts must be >= 0 (got {bad})")
        return resources

    @model_validator(mode="after")
    def _fractional_gpus_are_single_device(self) -> ResourcesConfig:
        if self.num_workers > 1 and 0 < self.gpus_per_trial < 1:
            raise ValueError(f"gpus_per_trial {self.gpus_per_trial} is per DDP worker: "
                             "fractions are for single-device trials (num_workers 0 or 1)")
        if self.gpus_per_trial > 1 and self.num_workers <= 1:
            raise ValueError(f"gpus_per_trial {self.gpus_per_trial} > 1 needs num_workers >= 2 (one GPU per worker)")
        return self


class TrackingConfig(StrictModel):
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: SQLite in the experiment dir)")
    experiment_name: str | None = Field(None, description="MLflow experiment (default: the experiment's name)")


class ExperimentConfig(TrainConfig):
    name: str = Field(description="experiment name: letters, digits, '-', '_', '.'")
    description: str = Field("", description="free text, shown in the report")
    storage_path: str = Field("experiments", description="local folder (made absolute against the current "
                              "folder) or s3:// / gs:// / abfss:// URI, with pyarrow's ?query options if needed")
    search: SearchConfig | None = Field(None, description="an Optuna search (give this or `ablation`)")
    ablation: AblationConfig | None = Field(None, description="arms x seeds with a table per arm (or `search`)")
    confirm: ConfirmConfig | None = Field(None, description="after the search: confirm its best settings over "
                                          "fresh seeds against a control (needs `search`)")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig, description="early stopping of a search")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="what a trial asks Ray for")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="where MLflow runs go")
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig, description="the statistics of the "
                                     "ablation and confirmation tables: declared family, level, power")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
            raise ValueError("use letters, digits, '-', '_' and '.' (it names folders and MLflow experiments)")
        return name

    @field_validator("storage_path")
    @classmethod
    def _storage_form(cls, path: str) -> str:
        if "://" in path and not path.startswith(REMOTE_SCHEMES + ("file://",)):
            raise ValueError(f"unsupported scheme; use a local path or one of {', '.join(REMOTE_SCHEMES)}")
        if path.startswith(REMOTE_SCHEMES) and not re.fullmatch(r"[a-z0-9]+://[^/\s]+(/\S*)?", path):
            raise ValueError("malformed URI: expected scheme://bucket/prefix")
        return path

    @model_validator(mode="after")
    def _one_mode(self) -> ExperimentConfig:
        if (self.search is None) == (self.ablation is None):
            raise ValueError("give exactly one of the sections 'search' (an Optuna search) or 'ablation' (arms x seeds)")
        max_t = self.scheduler.max_t or self.recipe.epochs
        if self.scheduler.max_t is not None and self.scheduler.max_t > self.recipe.epochs:
            raise ValueError(f"scheduler.max_t {self.scheduler.max_t} exceeds recipe.epochs {self.recipe.epochs}")
        if self.scheduler.type == "asha" and self.scheduler.grace_period > max_t:
            raise ValueError(f"scheduler.grace_period {self.scheduler.grace_period} exceeds max_t {max_t}")
        if self.confirm is not None:
            if self.search is None:
                raise ValueError("confirm: confirms the winners of a search; it needs a `search` section")
            reused = sorted(set(self.confirm.seeds) & set(self.search_seeds))
            if reused:
                raise ValueError(f"confirm.seeds {reused}: the search trained with seed(s) {self.search_seeds}; "
                                 "confirmation needs fresh seeds (the winners were picked on those)")
        if self.is_remote and self.tracking.tracking_uri is None:
            raise ValueError("storage_path is remote: set tracking.tracking_uri to an MLflow server "
                             "(e.g. http://127.0.0.1:5000 on the head node)")
        return self

    @property
    def table_comparisons(self) -> set[frozenset[str]]:
        """The comparisons the experiment's table makes (each a pair of arm names)."""
        made: set[frozenset[str]] = set()
        if self.ablation is not None:
            a = self.ablation
            for arm in a.arms:
                made |= {pair_key(arm, other) for other in (a.reference, a.control) if other not in (None, arm)}
        if self.confirm is not None:
            c = self.confirm
            winners = [f"top{rank}" for rank in range(1, c.top_k + 1)]
            reference = self.confirm_reference
            made |= {pair_key(arm, c.control) for arm in [*winners, *self.confirm_arms] if arm != c.control}
            if reference is not None:
                made |= {pair_key(winner, reference) for winner in winners}
        return made

    @property
    def confirm_reference(self) -> str | None:
        """The arm the search's winners are compared with: confirm.reference, else the method's default."""
        if self.confirm is None:
            return None
        if self.confirm.reference is not None:
            return self.confirm.reference
        base = self.base_train_config()
        return next((name for name, overrides in self.confirm_arms.items()
                     if setting_key(base, overrides) == setting_key(base, {})), None)

    @property
    def is_remote(self) -> bool:
        return self.storage_path.startswith(REMOTE_SCHEMES)

    @property
    def kind(self) -> str:
        """search or ablation, from the section the YAML gives (also the name of the main Tune stage); not
        search.mode, which is max or min."""
        return "ablation" if self.ablation is not None else "search"

    @property
    def max_epochs(self) -> int:
        return self.scheduler.max_t or self.recipe.epochs

    @property
    def objective(self) -> tuple[str, str]:
        """(metric, max|min) every choice of the experiment is made by: Optuna, ASHA, summary, report."""
        if self.search is not None:
            return self.search.metric, self.search.goal
        return "val/top1", "max"

    @property
    def search_seeds(self) -> list[int]:
        """The seeds the search's trials train with: the config's, or those its space may sample."""
        if self.search is None:
            return []
        param = self.search.space.get("seed")
        if param is None:
            return [self.seed]
        if param.choice is not None:
            return sorted({int(v) for v in param.choice})
        if param.int is not None:
            return list(range(param.int[0], param.int[1] + 1))
        return [self.seed]  # a continuous seed is refused when trials are validated

    @property
    def confirm_arms(self) -> dict[str, dict[str, Any]]:
        """The fixed settings a confirmation trains: `confirm.arms`, plus the method's default (the YAML's own
        setting, as `defaults`) when no arm trains it already."""
        if self.confirm is None:
            return {}
        base, arms = self.base_train_config(), dict(self.confirm.arms)
        if setting_key(base, {}) not in {setting_key(base, overrides) for overrides in arms.values()}:
            arms["defaults" if "defaults" not in arms else "yaml_default"] = {}
        return arms

    @property
    def chooses_on_test(self) -> bool:
        """True when the data has no validation split (`val_fraction: 0`): choices then use the test set."""
        return val_fraction_of(self.data) == 0

    def base_train_config(self) -> TrainConfig:
        return TrainConfig.model_validate(self.train_dict())


def setting_key(base: TrainConfig, overrides: dict[str, Any]) -> str:
    """What a setting trains, seed left out: two settings with the same key are one setting."""
    return json.dumps(base.with_overrides({**overrides, "seed": base.seed}).train_dict(), sort_keys=True)


def load_experiment(path: str, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Reads and validates an experiment YAML; `overrides` are dotted paths (CLI flags)."""
    tree = read_yaml(path)
    try:
        tree = apply_overrides(tree, overrides or {})
    except ValueError as err:
        raise ConfigError(f"--set: {err}") from None
    experiment = validate(ExperimentConfig, _absolute_paths(tree), source=path)
    trials = _check_trials_are_valid(experiment, path)
    _check_losses_of_the_search(experiment, path)
    _check_grace_period_covers_warmups(experiment, trials, path)
    _check_primary_comparisons(experiment, path)
    return experiment


FILE_FIELDS = (("storage_path",), ("data", "root"), ("teacher", "data", "root"), ("teacher", "checkpoint"))


def _absolute_paths(tree: dict[str, Any]) -> dict[str, Any]:
    """Relative data roots and checkpoints made absolute (against the driver's folder): trials run in folders
    of their own (Tune changes into each trial's), where a relative path would name another place."""
    for fields in FILE_FIELDS:
        node = tree
        for key in fields[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        leaf = fields[-1]
        if isinstance(node, dict) and isinstance(node.get(leaf), str) and "://" not in node[leaf]:
            node[leaf] = os.path.abspath(os.path.expanduser(node[leaf]))
        elif isinstance(node, dict) and isinstance(node.get(leaf), str) and node[leaf].startswith("file://"):
            node[leaf] = os.path.abspath(node[leaf].removeprefix("file://"))
    return tree


def _check_trials_are_valid(experiment: ExperimentConfig, source: str) -> list[tuple[str, TrainConfig]]:
    """Every searched parameter and every ablation arm must produce a valid TrainConfig; returns them."""
    base = experiment.base_train_config()
    checks: list[tuple[str, dict[str, Any]]] = [("the base config", {})]
    if experiment.search is not None:
        for name, param in experiment.search.space.items():
            values = param.choice if param.choice is not None else [param.midpoint(), *getattr(param, param.kind)]
            checks += [(f"search.space.{name}", {name: v}) for v in values]
        checks += [(f"search.points_to_evaluate[{i}]", point)
                   for i, point in enumerate(experiment.search.points_to_evaluate)]
    if experiment.ablation is not None:
        checks += [(f"ablation.arms.{arm}", overrides) for arm, overrides in experiment.ablation.arms.items()]
    if experiment.confirm is not None:
        checks += [(f"confirm.arms.{arm}", overrides) for arm, overrides in experiment.confirm.arms.items()]
    trials = []
    for where, overrides in checks:
        try:
            trials.append((where, base.with_overrides(overrides)))
        except ValidationError as err:
            raise ConfigError(f"{source}: {where} gives an invalid trial: {describe(err, TrainConfig)}") from None
        except ValueError as err:
            raise ConfigError(f"{source}: {where}: {err}") from None
    return trials


def _check_losses_of_the_search(experiment: ExperimentConfig, source: str) -> None:
    """A searched `loss.<p>` must exist in every loss it can be sampled with (its `when` conditions, and
    theirs in turn, decide which): otherwise some trials would fail, or worse, read another loss's
    same-named parameter."""
    search = experiment.search
    if search is None:
        return
    name_param = search.space.get("loss.name")
    names = list(name_param.choice) if name_param is not None else [experiment.loss.name]
    active: dict[str, list[str]] = {}  # parameter -> the loss names it can be sampled with
    for path, param in search.space.items():
        with_names = list(names)
        for other, allowed in (param.when or {}).items():
            allowed = allowed if isinstance(allowed, list) else [allowed]
            with_names = [n for n in with_names if n in (allowed if other == "loss.name" else active[other])]
        active[path] = with_names
        if not path.startswith("loss.") or path == "loss.name":
            continue
        field = path.split(".", 1)[1]
        lacking = [n for n in with_names if n in LOSSES and field not in LOSSES[n].Params.model_fields]
        if lacking:
            having = [n for n in names if n in LOSSES and field in LOSSES[n].Params.model_fields]
            raise ConfigError(f"{source}: search.space.{path}: loss {', '.join(lacking)} (a choice of loss.name) "
                              f"has no parameter '{field}'; sample it only for the losses that have one: "
                              f"when: {{loss.name: [{', '.join(having)}]}}")


def _check_grace_period_covers_warmups(experiment: ExperimentConfig, trials: list[tuple[str, TrainConfig]],
                                       source: str) -> None:
    """ASHA judges every trial at its grace period: a loss still ramping in then (BicKD's bilateral term,
    DKD's KD part) would be stopped for being on at part weight, biasing the search against it."""
    if experiment.search is None or experiment.scheduler.type != "asha":
        return
    grace = experiment.scheduler.grace_period
    for where, trial in trials:
        warmup = getattr(trial.loss, "warmup_epochs", 0)
        if warmup > grace:
            raise ConfigError(
                f"{source}: scheduler.grace_period {grace} is shorter than the warm-up of loss {trial.loss.name} "
                f"({where}: warmup_epochs {warmup:g}): ASHA would stop those trials before their loss is fully on; "
                f"set scheduler.grace_period >= {warmup:g} or a shorter warm-up")


def _check_primary_comparisons(experiment: ExperimentConfig, source: str) -> None:
    """Each declared comparison names two arms that the experiment's table compares with each other."""
    made = experiment.table_comparisons
    if experiment.analysis.primary and not made:
        raise ConfigError(f"{source}: analysis.primary: this experiment compares nothing (a search without a "
                          "confirm: section); declare primary comparisons for an ablation or a confirmation")
    names = sorted({name for pair in made for name in pair})
    for text in experiment.analysis.primary:
        arm, other = parse_comparison(text)
        for name in (arm, other):
            if name not in names:
                raise ConfigError(f"{source}: analysis.primary '{text}': '{name}' is not an arm of this experiment"
                                  f"{did_you_mean(name, names)}; arms: {', '.join(names)}")
        if pair_key(arm, other) not in made:
            raise ConfigError(f"{source}: analysis.primary '{text}': the table does not compare these two; it "
                              "compares " + ", ".join(sorted(" vs ".join(sorted(pair)) for pair in made)))
