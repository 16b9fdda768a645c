"""Logit standardization (Sun et al., CVPR 2024) on kd, dkd and bickd: the authors' arithmetic, re-written here
independently in float64, matched to 1e-10 in value and gradient; off, the losses are what they were; on, the
distillation parts ignore a per-sample affine map of the logits; the losses without it refuse it by name.

The float64 comparisons call each loss's `compute` on float64 tensors: `forward` only casts to float32 and
detaches the teacher before calling the same `compute`, and float32 cannot hold 1e-10.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from bickd.config_io import ConfigError
from bickd.losses import BicKDLoss, DKDLoss, KDLoss, build_loss
from bickd.losses.kd import kl_at_temperature
from bickd.losses.standardization import standardize_logits
from bickd_tune.experiment import load_experiment
from bickd_tune.trial import trial_config

TOLERANCE = 1e-10
AUTHORS_EPS = 1e-7  # sunshangquan/logit-standardization-KD, `normalize`: added to the standard deviation
LATE = 100.0  # an epoch after every warm-up: ramps are 1


# ---------- the authors' arithmetic, written independently in float64 ----------
def z_score(z: torch.Tensor) -> torch.Tensor:
    """Per row: (z - mean) / (eps + unbiased standard deviation), by explicit sums."""
    classes = z.shape[1]
    mean = z.sum(1, keepdim=True) / classes
    variance = ((z - mean) ** 2).sum(1, keepdim=True) / (classes - 1)
    return (z - mean) / (AUTHORS_EPS + variance.sqrt())


def kl_sum(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Sum over classes of p * (log p - log q), with 0 log 0 = 0 (as F.kl_div)."""
    return (torch.special.xlogy(p, p) - p * log_q).sum(1)


def kd_reference(zs, zt, T, on):
    s, t = (z_score(zs), z_score(zt)) if on else (zs, zt)
    return kl_sum(torch.softmax(t / T, 1), torch.log_softmax(s / T, 1)).mean() * T ** 2


def dkd_reference(zs, zt, y, T, alpha, beta, on):
    """Standardized before the target / non-target split; T^2 kept; non-target part by a -1000 shift."""
    s, t = (z_score(zs), z_score(zt)) if on else (zs, zt)
    target = F.one_hot(y, zs.shape[1]).to(zs.dtype)
    ps, pt = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    binary_s = torch.stack([(ps * target).sum(1), (ps * (1 - target)).sum(1)], 1)
    binary_t = torch.stack([(pt * target).sum(1), (pt * (1 - target)).sum(1)], 1)
    tckd = kl_sum(binary_t, binary_s.log()).sum() / len(y) * T ** 2
    nckd = kl_sum(torch.softmax(t / T - 1000.0 * target, 1),
                  torch.log_softmax(s / T - 1000.0 * target, 1)).sum() / len(y) * T ** 2
    return alpha * tckd + beta * nckd


def infonce_reference(a, b, tau):
    """Rows of a against rows of b, cosine / tau, the same index the positive."""
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    scores = a @ b.T / tau
    return (torch.logsumexp(scores, 1) - scores.diagonal()).mean()


def bilateral_reference(zs, zt, Tb, tau, on):
    s, t = (z_score(zs), z_score(zt)) if on else (zs, zt)
    qs, qt = torch.softmax(s / Tb, 1), torch.softmax(t / Tb, 1)
    return infonce_reference(qs, qt, tau), infonce_reference(qs.T, qt.T, tau)


def logits(seed=0, batch=16, classes=10, dtype=torch.float64):
    """Student (requires grad), teacher and labels; each row with its own scale and offset."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.rand(batch, 1, generator=generator, dtype=dtype) * 4 + 0.5
    offset = torch.randn(batch, 1, generator=generator, dtype=dtype)
    zs = torch.randn(batch, classes, generator=generator, dtype=dtype) * scale + offset
    zt = torch.randn(batch, classes, generator=generator, dtype=dtype) * 3
    y = torch.randint(0, classes, (batch,), generator=generator)
    return zs.requires_grad_(True), zt, y


def value_and_gradient(total, zs):
    (gradient,) = torch.autograd.grad(total, zs)
    return total.detach(), gradient


def assert_close(got, expected):
    (value, gradient), (value_ref, gradient_ref) = got, expected
    assert abs(float(value) - float(value_ref)) <= TOLERANCE, (float(value), float(value_ref))
    assert float((gradient - gradient_ref).abs().max()) <= TOLERANCE


# ---------- the arithmetic ----------
def test_standardized_rows_have_zero_mean_and_unit_unbiased_deviation():
    zs, _, _ = logits()
    z = standardize_logits(zs.detach())
    assert float(z.mean(1).abs().max()) < 1e-12
    # the unbiased deviation of a standardized row is std / (eps + std): 1 up to the authors' epsilon
    assert float((z.std(1, correction=1) - 1).abs().max()) < 1e-6
    assert float((z.std(1, correction=0) - 1).abs().max()) > 1e-3  # not the biased estimate


def test_a_row_of_equal_logits_standardizes_to_zeros_and_one_class_is_refused():
    assert torch.equal(standardize_logits(torch.full((2, 5), 3.0)), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="at least 2 classes"):
        standardize_logits(torch.ones(4, 1))


@pytest.mark.parametrize("on", [True, False], ids=["standardized", "off"])
@pytest.mark.parametrize("T", [2.0, 4.0])
def test_kd_matches_the_authors_arithmetic(on, T):
    zs, zt, y = logits()
    w_ce, w_kl = 0.1, 9.0
    got, _ = KDLoss(T=T, w_ce=w_ce, w_kl=w_kl, standardize=on).compute(zs, zt, y, LATE)
    expected = w_ce * F.cross_entropy(zs, y) + w_kl * kd_reference(zs, zt, T, on)  # CE on the raw logits
    assert_close(value_and_gradient(got, zs), value_and_gradient(expected, zs))


@pytest.mark.parametrize("on", [True, False], ids=["standardized", "off"])
def test_dkd_matches_the_authors_arithmetic(on):
    zs, zt, y = logits(seed=1)
    params = {"T": 2.0, "w_ce": 1.0, "alpha": 9.0, "beta": 72.0}  # LS README's resnet32x4 -> resnet8x4 DKD
    got, _ = DKDLoss(**params, standardize=on).compute(zs, zt, y, LATE)
    expected = params["w_ce"] * F.cross_entropy(zs, y) + dkd_reference(
        zs, zt, y, params["T"], params["alpha"], params["beta"], on)
    assert_close(value_and_gradient(got, zs), value_and_gradient(expected, zs))


@pytest.mark.parametrize("kl_on, bc_on", [(True, False), (False, True), (True, True), (False, False)],
                         ids=["kl", "bilateral", "both", "neither"])
def test_bickd_switches_standardize_their_own_part(kl_on, bc_on):
    zs, zt, y = logits(seed=2)
    p = {"T": 2.0, "Tb": 4.0, "w_ce": 0.1, "w_kl": 9.0, "tau": 0.1, "w_bc": 1.5, "w_row": 0.7, "w_col": 1.3}
    got, parts = BicKDLoss(**p, standardize=kl_on, standardize_bc=bc_on).compute(zs, zt, y, LATE)
    row, col = bilateral_reference(zs, zt, p["Tb"], p["tau"], bc_on)
    expected = (p["w_ce"] * F.cross_entropy(zs, y) + p["w_kl"] * kd_reference(zs, zt, p["T"], kl_on)
                + p["w_bc"] * (p["w_row"] * row + p["w_col"] * col))
    assert_close(value_and_gradient(got, zs), value_and_gradient(expected, zs))
    assert abs(float(parts["row"]) - float(row.detach())) <= TOLERANCE
    assert abs(float(parts["col"]) - float(col.detach())) <= TOLERANCE


# ---------- off is what the losses were ----------
def test_kd_off_is_bit_identical_to_the_kl_at_temperature_path():
    zs, zt, y = logits(dtype=torch.float32)
    total, parts = build_loss({"name": "kd", "T": 3.0, "w_ce": 0.2, "w_kl": 0.8})(zs, zt, y)
    kl = kl_at_temperature(zs, zt, 3.0)
    assert torch.equal(parts["kl"], kl.detach())
    assert torch.equal(total, 0.2 * F.cross_entropy(zs, y) + 0.8 * kl)


@pytest.mark.parametrize("params", [{"name": "kd", "T": 3.0}, {"name": "dkd", "beta": 2.0, "warmup_epochs": 5},
                                    {"name": "bickd", "tau": 0.2, "w_bc": 2.0, "symmetric": True}])
def test_off_is_bit_identical_to_the_loss_built_without_the_key(params):
    zs, zt, y = logits(seed=3, dtype=torch.float32)
    switches = {"standardize": False, **({"standardize_bc": False} if params["name"] == "bickd" else {})}
    plain, explicit = build_loss(params), build_loss({**params, **switches})
    (total, parts), (total_off, parts_off) = plain(zs, zt, y, epoch=2.5), explicit(zs, zt, y, epoch=2.5)
    assert torch.equal(total, total_off) and all(torch.equal(parts[k], parts_off[k]) for k in parts)
    (gradient,), (gradient_off,) = torch.autograd.grad(total, zs), torch.autograd.grad(total_off, zs)
    assert torch.equal(gradient, gradient_off)


# ---------- the behaviour it is for ----------
DISTILLATION_PARTS = [({"name": "kd"}, ["kl"]), ({"name": "dkd"}, ["tckd", "nckd"]),
                      ({"name": "bickd", "standardize_bc": True}, ["kl", "row", "col"])]


@pytest.mark.parametrize("params, keys", DISTILLATION_PARTS, ids=[p["name"] for p, _ in DISTILLATION_PARTS])
def test_standardized_parts_ignore_a_per_sample_shift_and_scale(params, keys):
    """Logits a_i * z_i + b_i (a_i > 0, per sample, student and teacher apart) give the same distillation
    parts with standardization on, and different ones with it off."""
    zs, zt, y = logits(seed=4)
    zs = zs.detach()
    generator = torch.Generator().manual_seed(5)
    scale = lambda: torch.rand(len(y), 1, generator=generator, dtype=zs.dtype) * 5 + 0.2  # noqa: E731
    shift = lambda: torch.randn(len(y), 1, generator=generator, dtype=zs.dtype) * 10  # noqa: E731
    zs_mapped, zt_mapped = zs * scale() + shift(), zt * scale() + shift()
    on = {**params, "standardize": True}
    _, before = build_loss(on).compute(zs, zt, y, LATE)
    _, after = build_loss(on).compute(zs_mapped, zt_mapped, y, LATE)
    for key in keys:
        assert float(after[key]) == pytest.approx(float(before[key]), rel=1e-6), key
    off = {k: v for k, v in params.items() if k != "standardize_bc"}
    _, before_off = build_loss(off).compute(zs, zt, y, LATE)
    _, after_off = build_loss(off).compute(zs_mapped, zt_mapped, y, LATE)
    assert all(float(after_off[k]) != pytest.approx(float(before_off[k]), rel=1e-3) for k in keys)


def test_forward_in_float32_agrees_with_the_float64_arithmetic():
    zs, zt, y = logits(seed=6)
    loss = build_loss({"name": "dkd", "T": 2.0, "alpha": 9.0, "beta": 72.0, "standardize": True})
    total32, _ = loss(zs.detach().float(), zt.float(), y, epoch=LATE)
    total64, _ = loss.compute(zs.detach(), zt, y, LATE)
    assert total32.dtype == torch.float32 and float(total32) == pytest.approx(float(total64), rel=1e-5)


# ---------- configuration ----------
TAKERS = "logit standardization applies to kd, bickd, dkd"
BASE = {"name": "ls", "data": {"name": "digits"}, "teacher": {"model": "resnet20"}, "student": {"model": "resnet8"},
        "recipe": {"epochs": 4, "milestones": [2, 3]}, "scheduler": {"type": "none"}}


def _experiment(tmp_path, **sections) -> str:
    path = tmp_path / "ls.yaml"
    path.write_text(yaml.safe_dump({**BASE, "storage_path": str(tmp_path / "runs"), **sections}, sort_keys=False))
    return str(path)


ONE_TRIAL = {"num_samples": 1}
REFUSALS = {
    "loss section": ({"loss": {"name": "dist", "standardize": True}, "search": ONE_TRIAL}, {}, "dist"),
    "ce": ({"loss": {"name": "ce", "standardize": True}, "search": ONE_TRIAL}, {}, "ce"),
    "losses section": ({"losses": {"dist": {"standardize": True}}, "search": ONE_TRIAL}, {}, "dist"),
    "--set": ({"loss": {"name": "kd"}, "search": ONE_TRIAL}, {"loss.name": "dist", "loss.standardize": True}, "dist"),
    "search": ({"loss": {"name": "dist"}, "search": {"num_samples": 2, "space": {
        "loss.standardize": {"choice": [True, False]}}}}, {}, "dist"),
    "ablation arm": ({"loss": {"name": "kd"}, "ablation": {"seeds": [0], "reference": "kd", "control": None, "arms": {
        "kd": {}, "dist_ls": {"loss.name": "dist", "loss.standardize": True}}}}, {}, "dist"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_losses_without_it_refuse_it_naming_those_that_take_it(tmp_path, case):
    sections, overrides, refused_by = REFUSALS[case]
    with pytest.raises(ConfigError) as err:
        load_experiment(_experiment(tmp_path, **sections), overrides)
    message = str(err.value)
    assert f"unknown key 'standardize': {TAKERS}; {refused_by} does not take it" in message
    assert "\n" not in message


def test_the_switch_is_searched_and_ablated_like_any_loss_parameter(tmp_path):
    searched = load_experiment(_experiment(tmp_path, loss={"name": "kd"}, search={"num_samples": 4, "space": {
        "loss.name": {"choice": ["kd", "dist"]},
        "loss.standardize": {"choice": [True, False], "when": {"loss.name": ["kd"]}}}}))
    point = trial_config(searched.base_train_config(), {"loss.name": "kd", "loss.standardize": True}, None)
    assert point.loss.name == "kd" and point.loss.standardize
    with pytest.raises(ConfigError, match=r"loss dist \(a choice of loss.name\) has no parameter 'standardize'"):
        load_experiment(_experiment(tmp_path, loss={"name": "kd"}, search={"num_samples": 4, "space": {
            "loss.name": {"choice": ["kd", "dist"]}, "loss.standardize": {"choice": [True, False]}}}))
    ablation = load_experiment(_experiment(tmp_path, loss={"name": "bickd"}, ablation={
        "seeds": [0], "reference": "full", "control": None,
        "arms": {"full": {}, "ls_kl": {"loss.standardize": True}, "ls_bc": {"loss.standardize_bc": True},
                 "dkd_ls": {"loss.name": "dkd", "loss.standardize": True}}}))
    arms = {arm: trial_config(ablation.base_train_config(), {"arm": arm, "seed": 0}, ablation.ablation.arms).loss
            for arm in ablation.ablation.arms}
    assert (arms["ls_kl"].standardize, arms["ls_kl"].standardize_bc) == (True, False)
    assert (arms["ls_bc"].standardize, arms["ls_bc"].standardize_bc) == (False, True)
    assert arms["dkd_ls"].name == "dkd" and arms["dkd_ls"].standardize and not arms["full"].standardize
