"""The one config object of a training run, validated once and passed unchanged to the training step.

`TrainConfig` holds everything a single distillation needs (data, teacher, student, recipe, loss, seed,
runtime). The platform's experiment schema extends it with search/scheduler/resources sections, and a trial
is `TrainConfig.with_overrides(sampled values)`: the same validation runs on every sampled point.
"""
from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bickd.losses import LossParams
from bickd.schema import StrictModel


class DataConfig(StrictModel):
    name: str = Field(description="data set: cifar100, imagenet, digits, digits_lowshot, shapes100")
    root: str | None = Field(None, description="folder holding (or receiving) the data set")
    download: bool = Field(False, description="let torchvision download CIFAR-100 into root")
    image_size: int | None = Field(None, gt=0, description="resize side for the offline sets (8..64)")
    seed: int = Field(0, ge=0, description="seed of the split / generation of offline sets")
    options: dict[str, int | float | str | bool | None] = Field(
        default_factory=dict, description="data-set specific options, e.g. train_per_class")

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from bickd.data import DATASETS
        return _one_of(name, sorted(DATASETS))


class TeacherConfig(StrictModel):
    model: str
    checkpoint: str | None = Field(
        None, description="trained teacher weights ({'model': state_dict}); unset = train it first")
    recipe: RecipeConfig | None = Field(
        None, description="recipe to train the teacher with when no checkpoint is given (default: the student's)")
    data: DataConfig | None = Field(
        None, description="data to train the teacher on (default: the student's), e.g. all labels of a low-shot set")

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        return _known_model_name(name)


class StudentConfig(StrictModel):
    model: str

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        return _known_model_name(name)


class RecipeConfig(StrictModel):
    """SGD recipe; defaults are the standard CIFAR-100 KD recipe (mdistiller / RepDistiller)."""
    epochs: int = Field(240, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    nesterov: bool = False
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: tuple[int, ...] = Field((150, 180, 210), description="epochs at which step decays the lr")
    lr_decay: float = Field(0.1, gt=0, le=1)

    @model_validator(mode="after")
    def _milestones_inside_training(self) -> RecipeConfig:
        if self.schedule == "step":
            bad = [m for m in self.milestones if not 0 < m < self.epochs]
            if bad:
                raise ValueError(f"milestones {list(bad)} must lie in 1..{self.epochs - 1} (epochs={self.epochs})")
            if list(self.milestones) != sorted(self.milestones):
                raise ValueError(f"milestones {list(self.milestones)} must be increasing")
        return self


class RuntimeConfig(StrictModel):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = Field(True, description="NHWC memory format: 10-30% faster convolutions on CPU and GPU")
    amp: Literal["off", "bf16", "fp16"] = Field("off", description="autocast dtype for forward passes")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice)")
    eval_every: int = Field(1, ge=1, description="evaluate on the test set every N epochs (and at the end)")
    checkpoint_every_s: float = Field(
        0.0, ge=0, description="seconds between checkpoints (0: every epoch); the last epoch always has one. "
        "A crash loses at most this much training; runs of second-long epochs set e.g. 30")


class TeacherCacheConfig(StrictModel):
    """Teacher logits computed once for a fixed set of augmented views, read by every trial (FKD-style).

    With the cache on, augmented views come from (`seed`, epoch mod `epochs`, sample index) instead of the
    run's seed: trials still differ in initialisation and data order, and they all train on views whose
    teacher logits are stored.
    """
    enabled: bool = False
    epochs: int = Field(8, ge=1, description="distinct augmentation epochs stored, cycled over training")
    seed: int = Field(0, ge=0, description="seed of the stored augmented views")
    path: str | None = Field(None, description="cache folder (set by the platform or bickd.train)")


class TrainConfig(StrictModel):
    data: DataConfig
    teacher: TeacherConfig | None = None
    student: StudentConfig
    recipe: RecipeConfig = Field(default_factory=RecipeConfig)
    loss: LossParams = Field(default_factory=lambda: {"name": "bickd"})
    seed: int = Field(0, ge=0, description="seed of initialisation, shuffling and augmentation")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    teacher_cache: TeacherCacheConfig = Field(default_factory=TeacherCacheConfig)

    @model_validator(mode="after")
    def _teacher_when_needed(self) -> TrainConfig:
        if self.loss.name != "ce" and self.teacher is None:
            raise ValueError(f"loss '{self.loss.name}' distils from a teacher: set teacher.model")
        return self

    def train_dict(self) -> dict[str, Any]:
        """The run's own fields only (subclasses add experiment sections on top)."""
        return self.model_dump(mode="json", include=set(TrainConfig.model_fields))

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """A validated copy with dotted-path overrides applied (`{"loss.tau": 0.2, "seed": 1}`).

        A dict value replaces the whole section (`{"loss": {"name": "ce"}}`), so a new loss does not
        inherit keys of the old one. Switching `loss.name` alone keeps the base loss's parameters that the
        new loss also takes (T, w_ce, ...) and drops the others; keys given in `overrides` always stay.
        """
        tree = self.train_dict()
        for path, value in overrides.items():
            _set_path(tree, path, copy.deepcopy(value))
        if "loss.name" in overrides and overrides["loss.name"] != self.loss.name:
            from bickd.losses import LOSSES
            name = overrides["loss.name"]
            if name in LOSSES:
                taken = set(LOSSES[name].Params.model_fields)
                given = {p.split(".", 1)[1] for p in overrides if p.startswith("loss.")}
                tree["loss"] = {k: v for k, v in tree["loss"].items() if k in taken or k in given}
        return TrainConfig.model_validate(tree)

    def teacher_training_config(self) -> TrainConfig:
        """The run that trains the teacher: same data and runtime, the teacher as student, plain CE."""
        assert self.teacher is not None
        return TrainConfig(
            data=self.teacher.data or self.data, teacher=None, student=StudentConfig(model=self.teacher.model),
            recipe=self.teacher.recipe or self.recipe, loss={"name": "ce"}, seed=self.seed, runtime=self.runtime,
            teacher_cache=TeacherCacheConfig())


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = tree
    for i, key in enumerate(parents):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ValueError(f"{'.'.join(parents[:i + 1])} is not a section, so {path} cannot be set")
        node = child
    node[leaf] = value


def _one_of(name: str, allowed: list[str]) -> str:
    if name in allowed:
        return name
    import difflib
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(f"unknown name '{name}'{hint}; allowed: {', '.join(allowed)}")


def _known_model_name(name: str) -> str:
    from bickd.models import MODEL_NAMES
    return _one_of(name, list(MODEL_NAMES))


TeacherConfig.model_rebuild()
