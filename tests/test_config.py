"""The config object: validation with field-naming errors, overrides, and the experiment schema."""
import pytest

from bickd.config import TrainConfig
from bickd.config_io import ConfigError, validate
from platform.experiment import ExperimentConfig, load_experiment

BASE = {"data": {"name": "digits"}, "teacher": {"model": "resnet20"}, "student": {"model": "resnet8"},
        "recipe": {"epochs": 4, "milestones": [2, 3]}}


def test_defaults_are_the_method_defaults():
    config = TrainConfig.model_validate(BASE)
    assert config.loss.name == "bickd"
    assert (config.loss.T, config.loss.w_ce, config.loss.w_kl, config.loss.tau) == (4, 0.1, 0.9, 0.1)
    assert config.recipe.lr == 0.05 and config.recipe.batch_size == 64


def test_overrides_validate_and_replace_sections():
    config = TrainConfig.model_validate(BASE)
    tuned = config.with_overrides({"loss.tau": 0.2, "seed": 3})
    assert tuned.loss.tau == 0.2 and tuned.seed == 3 and config.loss.tau == 0.1
    plain = config.with_overrides({"loss": {"name": "ce"}})
    assert plain.loss.name == "ce"
    with pytest.raises(Exception, match="tau"):
        config.with_overrides({"loss.tau": -1})


@pytest.mark.parametrize("patch, message", [
    ({"loss": {"name": "bickd", "tua": 0.1}}, "loss: unknown key 'tua' (did you mean 'tau'?)"),
    ({"loss": {"name": "bickd", "tau": 0}}, "loss.tau: Input should be greater than 0"),
    ({"loss": {"name": "bickd", "sim": "euclid"}}, "loss.sim"),
    ({"student": {"model": "resnet9"}}, "student.model: unknown name 'resnet9'"),
    ({"data": {"name": "cifar10"}}, "data.name: unknown name 'cifar10'"),
    ({"recipe": {"epochs": 0}}, "recipe.epochs"),
    ({"recipe": {"epochs": 10, "milestones": [5, 12]}}, "milestones [12] must lie in 1..9"),
    ({"loss": {"name": "wat"}}, "loss"),
])
def test_errors_name_the_field(patch, message):
    with pytest.raises(ConfigError) as err:
        validate(TrainConfig, {**BASE, **patch}, source="x.yaml")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_switching_the_loss_keeps_shared_parameters_only():
    config = TrainConfig.model_validate({**BASE, "loss": {"name": "bickd", "T": 2.0, "w_ce": 0.3, "tau": 0.2}})
    kd = config.with_overrides({"loss.name": "kd"})
    assert kd.loss.name == "kd" and kd.loss.T == 2.0 and kd.loss.w_ce == 0.3
    assert config.with_overrides({"loss.name": "ce"}).loss.name == "ce"
    with pytest.raises(Exception, match="tau"):  # a key given with the switch is never dropped silently
        config.with_overrides({"loss.name": "kd", "loss.tau": 0.5})


def test_distillation_needs_a_teacher():
    tree = {k: v for k, v in BASE.items() if k != "teacher"}
    with pytest.raises(ConfigError, match="teacher"):
        validate(TrainConfig, tree)
    assert validate(TrainConfig, {**tree, "loss": {"name": "ce"}}).teacher is None


def test_teacher_training_config_is_plain_ce_of_the_teacher():
    config = TrainConfig.model_validate(BASE)
    teacher_run = config.teacher_training_config()
    assert teacher_run.student.model == "resnet20" and teacher_run.loss.name == "ce"
    assert teacher_run.data == config.data


@pytest.mark.parametrize("path", ["search_spaces/cifar.yaml", "search_spaces/cifar_ablation.yaml",
                                  "search_spaces/imagenet.yaml", "search_spaces/demo.yaml"])
def test_shipped_experiments_validate(path):
    experiment = load_experiment(path)
    assert isinstance(experiment, ExperimentConfig)
    assert experiment.base_train_config().student.model


def test_experiment_rejects_search_and_ablation_together(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\ndata: {name: digits}\nteacher: {model: resnet20}\nstudent: {model: resnet8}\n"
                    "search: {num_samples: 2}\nablation: {seeds: [0], arms: {full: {}}, control: null}\n")
    with pytest.raises(ConfigError, match="exactly one of the sections"):
        load_experiment(str(path))
