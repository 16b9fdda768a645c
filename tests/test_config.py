"""The config object: validation with field-naming errors, overrides, and the experiment schema."""
import pytest
import yaml

from bickd.config import TrainConfig
from bickd.config_io import ConfigError, validate
from bickd_tune.experiment import ExperimentConfig, load_experiment
from bickd_tune.trial import trial_config

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
    ({"loss": {"name": "bickd", "tua": 0.1}}, "loss (bickd): unknown key 'tua' (did you mean 'tau'?)"),
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


# A base loss set away from its defaults, so a parameter carried over from it would show.
BASES = {"bickd": {"name": "bickd", "T": 2.0, "w_ce": 0.3, "tau": 0.2, "warmup_epochs": 1},
         "kd": {"name": "kd", "T": 2.0, "w_ce": 0.5, "w_kl": 0.5}}
SWITCHES = [("bickd", "dist", {"tau": 4.0, "w_ce": 1.0, "beta": 2.0, "gamma": 2.0}),
            ("bickd", "dkd", {"T": 4.0, "w_ce": 1.0, "alpha": 1.0, "beta": 8.0, "warmup_epochs": 20}),
            ("kd", "bickd", {"T": 4.0, "w_ce": 0.1, "w_kl": 0.9, "tau": 0.1, "w_bc": 1.0, "warmup_epochs": 20})]


def _experiment(tmp_path, base_loss: str, **sections) -> str:
    tree = {"name": "switch", **BASE, "loss": BASES[base_loss], "storage_path": str(tmp_path / "runs"),
            "scheduler": {"type": "none"}, **sections}
    path = tmp_path / "switch.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return str(path)


def _loss_of(config) -> dict:
    return config.loss.model_dump()


@pytest.mark.parametrize("old, new, defaults", SWITCHES, ids=[f"{o}-to-{n}" for o, n, _ in SWITCHES])
def test_a_switched_loss_gets_its_own_defaults_in_a_search_an_arm_and_set(tmp_path, old, new, defaults):
    search = load_experiment(_experiment(tmp_path, old, search={
        "num_samples": 2, "space": {"loss.name": {"choice": [old, new]}}}))
    from_search = trial_config(search.base_train_config(), {"loss.name": new}, None)
    ablation = load_experiment(_experiment(tmp_path, old, ablation={
        "seeds": [0], "reference": "base", "control": None, "arms": {"base": {}, "switched": {"loss.name": new}}}))
    from_arm = trial_config(ablation.base_train_config(), {"arm": "switched", "seed": 0}, ablation.ablation.arms)
    from_set = load_experiment(_experiment(tmp_path, old, search={"num_samples": 1}), {"loss.name": new})
    for config in (from_search, from_arm, from_set):
        loss = _loss_of(config)
        assert loss["name"] == new
        assert {k: loss[k] for k in defaults} == defaults  # nothing of the old loss carried over
    # and the base loss keeps its own settings where it is not switched
    assert _loss_of(trial_config(search.base_train_config(), {"loss.name": old}, None)) == \
        _loss_of(search.base_train_config())


def test_losses_section_sets_the_parameters_of_a_switched_to_loss(tmp_path):
    experiment = load_experiment(_experiment(tmp_path, "bickd", losses={"dist": {"tau": 2.0}}, search={
        "num_samples": 2, "space": {"loss.name": {"choice": ["bickd", "dist"]}}}))
    dist = trial_config(experiment.base_train_config(), {"loss.name": "dist"}, None)
    assert (dist.loss.tau, dist.loss.w_ce) == (2.0, 1.0)
    assert experiment.base_train_config().loss.tau == 0.2  # BicKD's own tau is untouched


@pytest.mark.parametrize("sections, overrides, message", [
    ({"search": {"num_samples": 1}}, {"loss.name": "kd", "loss.tau": 0.5},
     "loss (kd): unknown key 'tau': 'tau' applies to bickd, dist; kd does not take it; allowed: T, name, standardize, "
     "w_ce, w_kl"),
    ({"search": {"num_samples": 2, "space": {"loss.name": {"choice": ["kd", "bickd"]},
                                             "loss.tau": {"uniform": [0.05, 0.2]}}}}, {},
     "loss kd (a choice of loss.name) has no parameter 'tau'; sample it only for the losses that have one: "
     "when: {loss.name: [bickd]}"),
    ({"search": {"num_samples": 1}, "losses": {"bickd": {"tau": 0.3}}}, {}, "losses.bickd: bickd is this config's loss"),
    ({"search": {"num_samples": 1}, "losses": {"dist": {"tau": -1}}}, {}, "dist.tau: Input should be greater than 0"),
    ({"search": {"num_samples": 1}, "losses": {"dist": {"T": 4}}}, {}, "unknown key 'T': 'T' applies to kd, bickd, dkd; dist does not take it; dist takes: tau, w_ce"),
    ({"search": {"num_samples": 1}, "losses": {"dkdd": {}}}, {}, "unknown loss 'dkdd' (did you mean 'dkd'?)"),
    ({"search": {"num_samples": 2, "space": {"loss.name": {"choice": ["bickd", "dkd"]}}},
      "recipe": {"epochs": 30, "schedule": "cosine"}, "scheduler": {"type": "asha", "grace_period": 5}}, {},
     "scheduler.grace_period 5 is shorter than the warm-up of loss dkd (search.space.loss.name: warmup_epochs 20)"),
])
def test_bad_loss_combinations_are_one_line(tmp_path, sections, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_experiment(_experiment(tmp_path, "bickd", **sections), overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_relative_data_roots_and_checkpoints_become_absolute(tmp_path, monkeypatch):
    """Tune runs each trial in a folder of its own: a relative path would name another place there."""
    monkeypatch.chdir(tmp_path)
    experiment = load_experiment(_experiment(tmp_path, "bickd", search={"num_samples": 1},
                                             data={"name": "cifar100", "root": "data/cifar100"},
                                             teacher={"model": "resnet20", "checkpoint": "ckpt/t.pt"},
                                             storage_path="runs"))
    assert experiment.data.root == str(tmp_path / "data" / "cifar100")
    assert experiment.teacher.checkpoint == str(tmp_path / "ckpt" / "t.pt")
    assert experiment.storage_path == str(tmp_path / "runs")


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
