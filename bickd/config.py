"""The one config object of a training run: the YAML's training sections, validated, then handed to the loop.

`TrainConfig` holds everything a single distillation needs (data, teacher, student, recipe, loss, seed,
runtime). The platform's experiment schema extends it with search/scheduler/resources sections; a trial is
`TrainConfig.with_overrides(sampled values)`, which validates the whole config again, so every sampled point
meets the same rules. `apply_overrides` is the one dotted-path setter of the project.
"""
from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from bickd.config_io import taken_by_others
from bickd.data import DATASETS
from bickd.data.registry import validate_options
from bickd.losses import LOSSES, LossParams
from bickd.models import MODEL_NAMES
from bickd.names import one_of
from bickd.schema import StrictModel


class DataConfig(StrictModel):
    name: str = Field(description="data set: cifar100, imagenet, digits, digits_lowshot, shapes100")
    root: str | None = Field(None, description="folder holding (or receiving) the data set")
    download: bool = Field(False, description="let torchvision download CIFAR-100 into root")
    image_size: int | None = Field(None, gt=0, description="resize side for the offline sets (8..64)")
    seed: int = Field(0, ge=0, description="seed of the splits (validation included) / generation of offline sets")
    split_seed: int | None = Field(None, ge=0, description="seed of the validation split alone (default: seed); "
                                   "an ablation or confirmation with per_seed: [split] sets it to each trial's seed")
    val_fraction: float | None = Field(
        None, ge=0, lt=1, description="share of the training data held out for validation, which searches and "
        "schedulers choose on (default: the data set's own, e.g. 0.1 for cifar100). 0: no validation split, "
        "choices are made on test (optimistic; only for comparing with published numbers)")
    options: dict[str, int | float | str | bool | None] = Field(
        default_factory=dict, description="data-set specific options, e.g. train_per_class (docs/datasets.md)")

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        return one_of(name, sorted(DATASETS))

    @field_validator("options")
    @classmethod
    def _options_of_the_dataset(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "name" not in info.data:
            return options  # the name itself was refused
        validate_options(info.data["name"], options)  # pydantic reports a bad value as data.options.<key>
        return options


class TeacherConfig(StrictModel):
    model: str = Field(description="teacher network (the models of bickd/models: resnet32x4, wrn_40_2, resnet34, ...)")
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
    model: str = Field(description="student network (resnet8x4, resnet20, wrn_16_2, MobileNetV2, resnet18, ...)")

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
    nesterov: bool = Field(False, description="Nesterov momentum")
    schedule: Literal["step", "cosine", "constant"] = Field("step", description="learning-rate schedule over epochs")
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
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: the GPU when one is visible")
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
    enabled: bool = Field(False, description="cache the teacher's logits once instead of running it every step")
    epochs: int = Field(8, ge=1, description="distinct augmentation epochs stored, cycled over training")
    seed: int = Field(0, ge=0, description="seed of the stored augmented views")
    path: str | None = Field(None, description="cache folder (set by the platform or bickd.train)")


class TrainConfig(StrictModel):
    data: DataConfig = Field(description="the data set and its splits")
    teacher: TeacherConfig | None = Field(None, description="the network to distil from (not needed by loss ce)")
    student: StudentConfig = Field(description="the network trained")
    recipe: RecipeConfig = Field(default_factory=RecipeConfig, description="optimizer, schedule, epochs, batch")
    loss: LossParams = Field(default_factory=lambda: {"name": "bickd"},
                             description="the loss and its parameters; `name` picks one of the losses below")
    losses: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="parameters of the other losses a trial may switch to, keyed by loss "
        "name, e.g. {dkd: {beta: 8}}; a switched-to loss takes these and its own defaults, never `loss:`'s values")
    seed: int = Field(0, ge=0, description="seed of initialisation, shuffling and augmentation")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="device, precision, threads, checkpoints")
    teacher_cache: TeacherCacheConfig = Field(default_factory=TeacherCacheConfig,
                                              description="teacher logits computed once and read by every trial")

    @field_validator("losses")
    @classmethod
    def _each_loss_its_own_parameters(cls, losses: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, params in losses.items():
            one_of(name, sorted(LOSSES), what="loss")
            try:
                LOSSES[name].Params.model_validate({**params, "name": name})
            except ValidationError as err:
                first = err.errors(include_url=False)[0]
                where = ".".join(map(str, first["loc"]))
                takes = ", ".join(n for n in LOSSES[name].Params.model_fields if n != "name")
                hint = taken_by_others(where, name, {other: cls.Params for other, cls in LOSSES.items()})
                detail = (f"unknown key '{where}'{hint}; {name} takes: {takes}"
                          if first["type"] == "extra_forbidden" else f"{first['msg']} (got {first.get('input')!r})")
                raise ValueError(f"{name}.{where}: {detail}" if first["type"] != "extra_forbidden"
                                 else f"{name}: {detail}") from None
        return losses

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.loss.name != "ce" and self.teacher is None:
            raise ValueError(f"loss '{self.loss.name}' distils from a teacher: set teacher.model")
        if self.loss.name in self.losses:
            raise ValueError(f"losses.{self.loss.name}: {self.loss.name} is this config's loss; "
                             "give its parameters in the loss: section")
        return self

    def train_dict(self) -> dict[str, Any]:
        """The run's own fields only (subclasses add experiment sections on top)."""
        return self.model_dump(mode="json", include=set(TrainConfig.model_fields))

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """A validated copy with dotted-path overrides applied (`{"loss.tau": 0.2, "seed": 1}`): see
        `apply_overrides`."""
        return TrainConfig.model_validate(apply_overrides(self.train_dict(), overrides))

    def teacher_training_config(self) -> TrainConfig:
        """The run that trains the teacher: same data and runtime, the teacher as student, plain CE."""
        assert self.teacher is not None
        return TrainConfig(
            data=self.teacher.data or self.data, teacher=None, student=StudentConfig(model=self.teacher.model),
            recipe=self.teacher.recipe or self.recipe, loss={"name": "ce"}, seed=self.seed, runtime=self.runtime,
            teacher_cache=TeacherCacheConfig())


def apply_overrides(tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config `tree` with dotted-path overrides set; the one setter of the project.

    A dict value replaces the whole section (`{"loss": {"name": "ce"}}`). A trial that switches its loss
    (`loss.name`, or a `loss` dict of another name) gets that loss's own parameters: `losses.<name>` from
    the config, then its defaults; the `loss.*` keys given in the same overrides always stay, so a
    parameter the new loss does not take is an error, never dropped. Nothing of the old loss carries over:
    BicKD's `tau` (an InfoNCE temperature) is not DIST's `tau` (a softmax temperature).
    """
    tree = copy.deepcopy(tree)
    current = (tree.get("loss") or {}).get("name", "bickd")
    whole = overrides.get("loss")
    switched_to = (whole.get("name") if isinstance(whole, dict) else None) or overrides.get("loss.name")
    for path, value in overrides.items():
        _set_path(tree, path, copy.deepcopy(value))
    if switched_to is not None and switched_to != current:
        own = (tree.get("losses") or {}).pop(switched_to, {})
        given = {path.split(".", 1)[1]: value for path, value in overrides.items() if path.startswith("loss.")}
        tree["loss"] = {**own, **(whole if isinstance(whole, dict) else {}), **given, "name": switched_to}
    return tree


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


def _known_model_name(name: str) -> str:
    return one_of(name, list(MODEL_NAMES))


TeacherConfig.model_rebuild()
