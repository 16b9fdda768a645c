"""Losses against hand-computed values (plain `math`, not the implementation's helpers), switches,
gradient flow and numerical safety."""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from bickd.losses import (
    LOSSES,
    BicKDLoss,
    BicKDParams,
    CELoss,
    DISTLoss,
    DKDLoss,
    KDLoss,
    LossParams,
    build_loss,
)

ZS = [[1.0, -0.5], [0.2, 0.8]]   # student logits, B=2, C=2
ZT = [[2.0, -1.0], [-0.3, 1.5]]  # teacher logits
LABELS = [0, 1]


# ---------- reference arithmetic on Python lists ----------
def softmax(row, T=1.0):
    m = max(v / T for v in row)
    e = [math.exp(v / T - m) for v in row]
    return [v / sum(e) for v in e]


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def columns(m):
    return [list(c) for c in zip(*m)]


def scores(a_rows, b_rows, sim, tau):
    return [[sim(a, b) / tau for b in b_rows] for a in a_rows]


def lse(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def nce(S, positives, contrast="full", orth=1.0):
    total = 0.0
    for i, row in enumerate(S):
        pos = positives[i]
        align = -sum(row[p] for p in pos) / len(pos)
        if contrast == "positive_only":
            total += align
        elif contrast == "negative_only":
            negs = [v for j, v in enumerate(row) if j not in pos]
            total += lse(negs) if negs else 0.0
        else:
            total += align + orth * lse(row)
    return total / len(S)


def transpose(S):
    return [list(r) for r in zip(*S)]


def qs_qt(Tb=4.0):
    return [softmax(r, Tb) for r in ZS], [softmax(r, Tb) for r in ZT]


def kl_ref(T):
    total = 0.0
    for s, t in zip(ZS, ZT):
        ps, pt = softmax(s, T), softmax(t, T)
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    return total / len(ZS) * T * T


def ce_ref():
    return sum(-math.log(softmax(r)[y]) for r, y in zip(ZS, LABELS)) / len(ZS)


def run(loss, epoch=100.0):
    total, parts = loss(torch.tensor(ZS), torch.tensor(ZT), torch.tensor(LABELS), epoch=epoch)
    return float(total), {k: float(v) for k, v in parts.items()}


# ---------- KD ----------
@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kl_and_ce_match_hand_computation(T):
    total, parts = run(KDLoss(T=T, w_ce=0.3, w_kl=0.7))
    assert parts["kl"] == pytest.approx(kl_ref(T), rel=1e-5)
    assert parts["ce"] == pytest.approx(ce_ref(), rel=1e-5)
    assert total == pytest.approx(0.3 * ce_ref() + 0.7 * kl_ref(T), rel=1e-5)


def test_bickd_without_bilateral_term_is_exactly_kd():
    torch.manual_seed(0)
    zs, zt, y = torch.randn(64, 100) * 3, torch.randn(64, 100) * 3, torch.randint(0, 100, (64,))
    kd, _ = KDLoss(T=3.0, w_ce=0.2, w_kl=1.1)(zs, zt, y)
    bickd, _ = BicKDLoss(T=3.0, w_ce=0.2, w_kl=1.1, w_bc=0.0, tau=0.05)(zs, zt, y, epoch=50)
    assert abs(float(kd) - float(bickd)) <= 1e-6


def test_total_is_the_weighted_sum_of_its_parts():
    loss = BicKDLoss(w_ce=0.3, w_kl=0.6, w_bc=2.0, w_row=0.7, w_col=1.3, warmup_epochs=10)
    total, p = run(loss, epoch=4.0)
    assert p["ramp"] == pytest.approx(0.4)
    expected = 0.3 * p["ce"] + 0.6 * p["kl"] + 2.0 * 0.4 * (0.7 * p["row"] + 1.3 * p["col"])
    assert total == pytest.approx(expected, rel=1e-6)


# ---------- the bilateral term, switch by switch ----------
@pytest.mark.parametrize("sim_name, sim, tau", [("cos", cos, 0.1), ("cos", cos, 0.5), ("dot", dot, 0.02)])
def test_row_and_column_infonce(sim_name, sim, tau):
    qs, qt = qs_qt()
    _, p = run(BicKDLoss(sim=sim_name, tau=tau))
    assert p["row"] == pytest.approx(nce(scores(qs, qt, sim, tau), [[0], [1]]), rel=1e-5)
    assert p["col"] == pytest.approx(nce(scores(columns(qs), columns(qt), sim, tau), [[0], [1]]), rel=1e-5)


def test_label_positives_use_every_same_class_row():
    qs, qt = qs_qt()
    same = [0, 0]  # both samples share a label: each row has two positives
    _, parts = BicKDLoss(row_positives="label")(torch.tensor(ZS), torch.tensor(ZT), torch.tensor(same), epoch=100)
    assert float(parts["row"]) == pytest.approx(nce(scores(qs, qt, cos, 0.1), [[0, 1], [0, 1]]), rel=1e-5)
    _, index = BicKDLoss(row_positives="index")(torch.tensor(ZS), torch.tensor(ZT), torch.tensor(same), epoch=100)
    assert float(index["row"]) != pytest.approx(float(parts["row"]))


def test_label_positives_with_mixed_labels():
    zs3 = [[1.0, -0.5, 0.3], [0.2, 0.8, -1.0], [-0.7, 0.1, 1.2]]
    zt3 = [[2.0, -1.0, 0.0], [1.1, 0.4, -0.6], [-0.3, -0.2, 1.5]]
    qs, qt = [softmax(r, 4.0) for r in zs3], [softmax(r, 4.0) for r in zt3]
    S = scores(qs, qt, cos, 0.1)
    # labels [0, 0, 1]: rows 0 and 1 share a class (two positives each), row 2 is alone (its own row only)
    expected = nce(S, [[0, 1], [0, 1], [2]])
    # written out for row 2, independently of `nce`: -S_22 + log(sum_j exp S_2j)
    row2 = -S[2][2] + math.log(sum(math.exp(v) for v in S[2]))
    assert row2 == pytest.approx(nce([S[2]], [[2]]), rel=1e-9)
    _, p = BicKDLoss(row_positives="label")(torch.tensor(zs3), torch.tensor(zt3), torch.tensor([0, 0, 1]), epoch=100)
    assert float(p["row"]) == pytest.approx(expected, rel=1e-5)
    _, neg = BicKDLoss(row_positives="label", contrast="negative_only")(
        torch.tensor(zs3), torch.tensor(zt3), torch.tensor([0, 0, 1]), epoch=100)
    # decoupled repulsion: rows 0, 1 have the single negative 2; row 2 has negatives 0 and 1
    assert float(neg["row"]) == pytest.approx((S[0][2] + S[1][2] + lse([S[2][0], S[2][1]])) / 3, rel=1e-5)


def test_single_sample_row_term_is_zero_and_cos_ignores_scale():
    # B=1, index positives: one candidate, softmax of it is 1, InfoNCE = -log 1 = 0.
    _, p = BicKDLoss()(torch.tensor([[3.0, -2.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([1]), epoch=100)
    assert float(p["row"]) == pytest.approx(0.0, abs=1e-6)
    # tau scales the cosine scores: with tau -> 2*tau every score halves.
    qs, qt = qs_qt()
    _, a = run(BicKDLoss(tau=0.1, orthogonality=0.0))
    _, b = run(BicKDLoss(tau=0.2, orthogonality=0.0))
    assert b["row"] == pytest.approx(a["row"] / 2, rel=1e-5)
    assert a["row"] == pytest.approx(-(cos(qs[0], qt[0]) + cos(qs[1], qt[1])) / 2 / 0.1, rel=1e-5)


@pytest.mark.parametrize("orth", [0.0, 0.5, 1.0, 3.0])
def test_orthogonality_weighs_the_repulsion(orth):
    qs, qt = qs_qt()
    _, p = run(BicKDLoss(orthogonality=orth))
    assert p["row"] == pytest.approx(nce(scores(qs, qt, cos, 0.1), [[0], [1]], orth=orth), rel=1e-5, abs=1e-6)
    assert p["col"] == pytest.approx(nce(scores(columns(qs), columns(qt), cos, 0.1), [[0], [1]], orth=orth),
                                     rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("contrast", ["positive_only", "negative_only"])
def test_contrast_keeps_one_part(contrast):
    qs, qt = qs_qt()
    _, p = run(BicKDLoss(contrast=contrast))
    assert p["row"] == pytest.approx(nce(scores(qs, qt, cos, 0.1), [[0], [1]], contrast), rel=1e-5)
    assert p["col"] == pytest.approx(nce(scores(columns(qs), columns(qt), cos, 0.1), [[0], [1]], contrast), rel=1e-5)


def test_symmetric_averages_the_teacher_anchored_direction():
    qs, qt = qs_qt()
    S = scores(qs, qt, cos, 0.1)
    K = scores(columns(qs), columns(qt), cos, 0.1)
    _, p = run(BicKDLoss(symmetric=True))
    assert p["row"] == pytest.approx(0.5 * (nce(S, [[0], [1]]) + nce(transpose(S), [[0], [1]])), rel=1e-5)
    assert p["col"] == pytest.approx(0.5 * (nce(K, [[0], [1]]) + nce(transpose(K), [[0], [1]])), rel=1e-5)


def test_tb_sets_the_bilateral_temperature_only():
    qs, qt = qs_qt(Tb=2.0)
    _, p = run(BicKDLoss(T=4.0, Tb=2.0))
    assert p["row"] == pytest.approx(nce(scores(qs, qt, cos, 0.1), [[0], [1]]), rel=1e-5)
    assert p["kl"] == pytest.approx(kl_ref(4.0), rel=1e-5)


@pytest.mark.parametrize("warmup, epoch, ramp", [(20, 0.0, 0.0), (20, 10.0, 0.5), (20, 20.0, 1.0), (20, 35.0, 1.0),
                                                 (0, 0.0, 1.0)])
def test_warmup_ramp(warmup, epoch, ramp):
    loss = BicKDLoss(warmup_epochs=warmup)
    total, p = run(loss, epoch=epoch)
    assert p["ramp"] == pytest.approx(ramp)
    assert total == pytest.approx(0.1 * p["ce"] + 0.9 * p["kl"] + ramp * (p["row"] + p["col"]), rel=1e-6)


def test_switching_a_side_off_removes_it_from_the_total():
    _, both = run(BicKDLoss())
    rows_only, _ = run(BicKDLoss(w_col=0.0))
    cols_only, _ = run(BicKDLoss(w_row=0.0))
    base = 0.1 * both["ce"] + 0.9 * both["kl"]
    assert rows_only == pytest.approx(base + both["row"], rel=1e-6)
    assert cols_only == pytest.approx(base + both["col"], rel=1e-6)


# ---------- gradients and numerics ----------
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_reach_only_the_student(name):
    zs = torch.randn(8, 5, requires_grad=True)
    zt = torch.randn(8, 5, requires_grad=True)
    total, _ = build_loss({"name": name})(zs, zt, torch.randint(0, 5, (8,)), epoch=30)
    total.backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert zt.grad is None


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_parts_are_detached_float32_scalars(name):
    zs = torch.randn(8, 5, dtype=torch.float16).requires_grad_(True)
    total, parts = build_loss({"name": name})(zs, torch.randn(8, 5, dtype=torch.float16), torch.randint(0, 5, (8,)))
    assert total.dim() == 0 and total.dtype == torch.float32 and total.requires_grad
    for key, value in parts.items():
        assert isinstance(value, torch.Tensor), key
        assert value.dim() == 0 and value.dtype == torch.float32 and not value.requires_grad, key


@pytest.mark.parametrize("params", [{}, {"sim": "dot", "tau": 0.005}, {"symmetric": True, "row_positives": "label"}])
def test_autocast_does_not_lower_the_precision(params):
    torch.manual_seed(1)
    zs, zt, y = torch.randn(32, 20) * 3, torch.randn(32, 20) * 3, torch.randint(0, 20, (32,))
    loss = BicKDLoss(**params)
    total, ref = loss(zs, zt, y, epoch=30)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total_ac, got = loss(zs, zt, y, epoch=30)
    assert total_ac.dtype == torch.float32
    assert float(total_ac) == pytest.approx(float(total), rel=1e-6)
    for key in ref:
        assert got[key].dtype == torch.float32
        assert float(got[key]) == pytest.approx(float(ref[key]), rel=1e-6, abs=1e-7), key


def test_ce_runs_without_a_teacher():
    loss = CELoss()
    total, parts = loss(torch.tensor(ZS), None, torch.tensor(LABELS))
    assert float(total) == pytest.approx(ce_ref(), rel=1e-6) and set(parts) == {"ce"}
    assert not loss.needs_teacher and all(LOSSES[n].needs_teacher for n in LOSSES if n != "ce")
    with pytest.raises(ValueError, match="teacher"):
        KDLoss()(torch.tensor(ZS), None, torch.tensor(LABELS))


CASES = {
    "extreme": (torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]]), torch.tensor([[-1e4, 1e4, 0.0], [1e4, 0.0, -1e4]]),
                torch.tensor([0, 1])),
    "single sample, two classes": (torch.tensor([[3.0, -2.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([1])),
    "all equal": (torch.zeros(4, 3), torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])),
    "lone label": (torch.randn(5, 4) * 50, torch.randn(5, 4) * 50, torch.tensor([0, 1, 1, 2, 3])),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("params", [{"name": "bickd"}, {"name": "bickd", "sim": "dot", "symmetric": True,
                                                        "row_positives": "label", "contrast": "negative_only"},
                                    {"name": "kd"}, {"name": "dkd"}, {"name": "dist"},
                                    # logit standardization: a row of equal logits has std 0 (the epsilon's case)
                                    {"name": "kd", "standardize": True}, {"name": "dkd", "standardize": True},
                                    {"name": "bickd", "standardize": True, "standardize_bc": True}])
def test_finite_loss_and_gradients(case, dtype, params):
    zs, zt, y = CASES[case]
    student = zs.detach().clone().to(dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        total, parts = build_loss(params)(student, zt.to(dtype), y, epoch=30)
    total.backward()
    assert torch.isfinite(total), (case, dtype, params, parts)
    assert all(torch.isfinite(v) for v in parts.values())
    assert torch.isfinite(student.grad).all()


# ---------- baselines ----------
def test_dkd_and_dist_vanish_when_student_equals_teacher():
    z = torch.tensor(ZT)
    y = torch.tensor(LABELS)
    _, dkd = DKDLoss()(z.clone(), z, y, epoch=30)
    _, dist = DISTLoss()(z.clone(), z, y)
    assert float(dkd["tckd"]) == pytest.approx(0.0, abs=1e-6) and float(dkd["nckd"]) == pytest.approx(0.0, abs=1e-6)
    assert float(dist["inter"]) == pytest.approx(0.0, abs=1e-5) and float(dist["intra"]) == pytest.approx(0.0, abs=1e-5)


def test_dkd_parts_match_hand_computation():
    T = 4.0
    _, p = run(DKDLoss(T=T, warmup_epochs=0))
    tckd = nckd = 0.0
    for s, t, y in zip(ZS, ZT, LABELS):
        ps, pt = softmax(s, T), softmax(t, T)
        bs, bt = [ps[y], 1 - ps[y]], [pt[y], 1 - pt[y]]
        tckd += sum(q * math.log(q / r) for r, q in zip(bs, bt))
        # with two classes the non-target distribution is a single certain class: NCKD = 0
    assert p["tckd"] == pytest.approx(tckd / 2 * T * T, rel=1e-5)
    assert p["nckd"] == pytest.approx(nckd, abs=1e-6)


ZS3 = [[1.0, -0.5, 0.3], [0.2, 0.8, -1.0], [-0.7, 0.1, 1.2]]  # B=3, C=3
ZT3 = [[2.0, -1.0, 0.0], [1.1, 0.4, -0.6], [-0.3, -0.2, 1.5]]
Y3 = [0, 2, 1]


def test_dkd_non_target_part_matches_hand_computation():
    T = 2.0
    total, p = DKDLoss(T=T, w_ce=0.5, alpha=1.5, beta=3.0, warmup_epochs=10)(
        torch.tensor(ZS3), torch.tensor(ZT3), torch.tensor(Y3), epoch=5.0)
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(ZS3, ZT3, Y3):
        ps, pt = softmax(s_row, T), softmax(t_row, T)
        tckd += pt[y] * math.log(pt[y] / ps[y]) + (1 - pt[y]) * math.log((1 - pt[y]) / (1 - ps[y]))
        rest_s = softmax([v for c, v in enumerate(s_row) if c != y], T)
        rest_t = softmax([v for c, v in enumerate(t_row) if c != y], T)
        nckd += sum(q * math.log(q / r) for r, q in zip(rest_s, rest_t))
    tckd, nckd = tckd / 3 * T * T, nckd / 3 * T * T
    ce = sum(-math.log(softmax(r)[y]) for r, y in zip(ZS3, Y3)) / 3
    assert p["tckd"] == pytest.approx(tckd, rel=1e-5) and p["nckd"] == pytest.approx(nckd, rel=1e-5)
    # 0-based epoch 5 of a 10-epoch warm-up is mdistiller's epoch 6: weight 0.6
    assert float(total) == pytest.approx(0.5 * ce + 0.6 * (1.5 * tckd + 3.0 * nckd), rel=1e-5)


def pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return num / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def test_dist_matches_hand_computation():
    tau = 2.0
    total, p = DISTLoss(tau=tau, w_ce=1.0, beta=1.5, gamma=0.5)(torch.tensor(ZS3), torch.tensor(ZT3), torch.tensor(Y3))
    ys, yt = [softmax(r, tau) for r in ZS3], [softmax(r, tau) for r in ZT3]
    inter = tau ** 2 * sum(1 - pearson(a, b) for a, b in zip(ys, yt)) / 3
    intra = tau ** 2 * sum(1 - pearson(a, b) for a, b in zip(columns(ys), columns(yt))) / 3
    ce = sum(-math.log(softmax(r)[y]) for r, y in zip(ZS3, Y3)) / 3
    assert float(p["inter"]) == pytest.approx(inter, rel=1e-5)
    assert float(p["intra"]) == pytest.approx(intra, rel=1e-5)
    assert float(total) == pytest.approx(ce + 1.5 * inter + 0.5 * intra, rel=1e-5)


@pytest.mark.parametrize("epoch, weight", [(0.0, 1 / 20), (0.7, 1 / 20), (1.0, 2 / 20), (1.99, 2 / 20),
                                           (19.0, 1.0), (20.0, 1.0), (35.5, 1.0)])
def test_dkd_warmup_follows_mdistillers_one_based_epochs(epoch, weight):
    """mdistiller weighs DKD by min(epoch / 20, 1) with epochs counted from 1, once per epoch: our 0-based
    epoch 0 trains at 1/20 (not 0), epoch 19 at full weight; steps inside an epoch do not move it."""
    z = (torch.tensor(ZS3), torch.tensor(ZT3), torch.tensor(Y3))
    total, p = DKDLoss(warmup_epochs=20)(*z, epoch=epoch)
    assert float(total) == pytest.approx(float(p["ce"]) + weight * (float(p["tckd"]) + 8 * float(p["nckd"])), rel=1e-6)


# ---------- construction and validation ----------
def test_build_loss_from_dict_and_from_params():
    loss = build_loss({"name": "bickd", "tau": 0.2, "sim": "dot"})
    assert isinstance(loss, BicKDLoss) and loss.params.tau == 0.2 and loss.params.sim == "dot"
    params = TypeAdapter(LossParams).validate_python({"name": "dkd", "beta": 2.0})
    assert isinstance(build_loss(params), DKDLoss) and build_loss(params).params.beta == 2.0
    assert isinstance(build_loss(BicKDParams(w_bc=0.5)), BicKDLoss)
    assert BicKDLoss().params.Tb is None and BicKDLoss().params.warmup_epochs == 20
    with pytest.raises(ValidationError):
        build_loss({"name": "crd"})
    with pytest.raises(ValidationError, match="beta"):
        build_loss({"name": "kd", "beta": 8.0})  # a DKD key is not a KD key
@pytest.mark.parametrize("cls, bad, field", [
    (BicKDLoss, {"tau": -1}, "tau"), (BicKDLoss, {"T": 0}, "T"), (BicKDLoss, {"Tb": -2.0}, "Tb"),
    (BicKDLoss, {"sim": "l2"}, "sim"), (BicKDLoss, {"contrast": "both"}, "contrast"),
    (BicKDLoss, {"row_positives": "class"}, "row_positives"), (BicKDLoss, {"tua": 0.1}, "tua"),
    (BicKDLoss, {"w_bc": -0.1}, "w_bc"), (BicKDLoss, {"warmup_epochs": -1}, "warmup_epochs"),
    (KDLoss, {"w_kl": -0.5}, "w_kl"), (KDLoss, {"T": -4}, "T"), (DKDLoss, {"beta": -1}, "beta"),
    (DISTLoss, {"tau": 0}, "tau"), (CELoss, {"T": 4}, "T")])
def test_bad_parameters_are_refused_by_name(cls, bad, field):
    with pytest.raises(ValidationError, match=field):
        cls(**bad)
