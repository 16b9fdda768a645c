"""The statistics of the ablation and confirmation tables on known per-seed numbers, each answer computed
independently here (scipy's tests, Holm's definition, the noncentral t distribution)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bickd_tune import statistics
from bickd_tune.ablation import ablation_table, comparison_pairs, write_table
from bickd_tune.experiment import AblationConfig, AnalysisConfig, ExperimentConfig
from bickd_tune.statistics import PAIRED, WELCH
from bickd_tune.tables import analyse

FULL = [79.1, 80.4, 78.9, 80.0, 79.6]
KD = [77.8, 78.9, 77.1, 78.8, 78.0]
NOISY = [78.0, 81.0, 77.5, 80.5, 79.0]


def _series(values, seeds=range(5)) -> pd.Series:
    return pd.Series(values, index=list(seeds), dtype=float)


def _rows(arms: dict[str, list[float]], seeds=range(5)) -> pd.DataFrame:
    return pd.DataFrame([{"arm": arm, "seed": seed, "val_top1": value + 0.5, "test_top1": value}
                         for arm, values in arms.items() for seed, value in zip(seeds, values)])


def test_arms_that_ran_the_same_seeds_are_compared_paired():
    c = statistics.compare("full", _series(FULL), "kd", _series(KD))
    expected = stats.ttest_rel(FULL, KD)
    assert c.test == PAIRED and c.n == 5
    assert c.p == pytest.approx(expected.pvalue) and c.delta == pytest.approx(np.mean(FULL) - np.mean(KD))
    differences = np.subtract(FULL, KD)
    half = stats.t.ppf(0.975, 4) * differences.std(ddof=1) / math.sqrt(5)
    assert (c.ci_low, c.ci_high) == pytest.approx((differences.mean() - half, differences.mean() + half))


def test_arms_on_different_seeds_are_compared_with_welch():
    c = statistics.compare("full", _series(FULL, range(5)), "kd", _series(KD, range(10, 15)))
    assert c.test == WELCH
    assert c.p == pytest.approx(stats.ttest_ind(FULL, KD, equal_var=False).pvalue)


def test_only_the_common_seeds_are_paired():
    c = statistics.compare("full", _series(FULL), "kd", _series(KD[:4], range(4)))
    assert c.test == PAIRED and c.n == 4
    assert c.p == pytest.approx(stats.ttest_rel(FULL[:4], KD[:4]).pvalue)


def _holm_by_definition(pvalues: list[float]) -> list[float]:
    order = sorted(range(len(pvalues)), key=pvalues.__getitem__)
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def test_holm_matches_its_step_down_definition():
    raw = [0.04, 0.01, 0.03, 0.2]
    assert statistics.holm(raw) == pytest.approx(_holm_by_definition(raw))
    assert statistics.holm([0.5, math.nan, 0.9]) == pytest.approx([1.0, math.nan, 1.0], nan_ok=True)


def test_declared_comparisons_form_their_own_family_and_the_rest_another():
    arms = {"full": FULL, "kd": KD, "noisy": NOISY, "other": [v - 0.3 for v in NOISY]}
    pairs = [("full", "kd"), ("noisy", "kd"), ("other", "kd"), ("noisy", "full"), ("other", "full")]
    rows = _rows(arms)
    declared = AnalysisConfig(primary=["kd vs full", "noisy vs kd"])
    by_name = {c.name: c for c in analyse(rows, pairs, declared)}
    oriented = [("kd", "full") if pair == ("full", "kd") else pair for pair in pairs]  # as it was declared
    raw = {f"{a} vs {b}": stats.ttest_rel(arms[a], arms[b]).pvalue for a, b in oriented}
    assert list(by_name) == [f"{a} vs {b}" for a, b in oriented]
    assert by_name["kd vs full"].delta == pytest.approx(np.mean(KD) - np.mean(FULL))
    primary, exploratory = ["kd vs full", "noisy vs kd"], ["other vs kd", "noisy vs full", "other vs full"]
    for family, names in (("primary", primary), ("exploratory", exploratory)):
        expected = _holm_by_definition([raw[n] for n in names])
        assert [by_name[n].p_adjusted for n in names] == pytest.approx(expected)
        assert all(by_name[n].family == family and by_name[n].family_size == len(names) for n in names)
    undeclared = {c.name: c for c in analyse(rows, pairs, AnalysisConfig())}  # each the way the table lists it
    raw["full vs kd"] = raw["kd vs full"]
    expected = _holm_by_definition([raw[f"{a} vs {b}"] for a, b in pairs])
    assert [undeclared[f"{a} vs {b}"].p_adjusted for a, b in pairs] == pytest.approx(expected)
    assert {c.family for c in undeclared.values()} == {"all"}


def _simulated_power(test: str, effect: float, spread: float, n: int, level: float, draws: int = 40_000) -> float:
    """How often the test rejects when the true difference is `effect`: simulated experiments, scipy's tests."""
    rng = np.random.default_rng(0)
    if test == PAIRED:
        differences = rng.normal(effect, spread, size=(draws, n))
        p = stats.ttest_1samp(differences, 0.0, axis=1).pvalue
    else:
        a, b = rng.normal(effect, spread, size=(draws, n)), rng.normal(0.0, spread, size=(draws, n))
        p = stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue
    return float((p < level).mean())


@pytest.mark.parametrize("test, n, spread, level", [(PAIRED, 5, 1.0, 0.05), (PAIRED, 8, 0.7, 0.05 / 10),
                                                    (PAIRED, 3, 2.0, 0.025), (WELCH, 6, 1.2, 0.05)])
def test_the_detectable_effect_is_found_with_the_stated_power(test, n, spread, level):
    effect = statistics.detectable_effect(test, n, spread, level, 0.8)
    # 40,000 simulated experiments: a binomial SD of 0.002 around the true power. Welch's estimated degrees of
    # freedom cost it a little against the equal-variance test the figure is computed for (0.78 at 6 per arm).
    assert _simulated_power(test, effect, spread, n, level) == pytest.approx(0.8, abs=0.01 if test == PAIRED else 0.03)


@pytest.mark.parametrize("effect, spread, level", [(2.0, 1.5, 0.05), (0.42, 1.0, 0.05), (1.0, 0.8, 0.005)])
def test_seeds_needed_is_the_first_count_with_the_stated_power(effect, spread, level):
    n = int(statistics.seeds_needed(PAIRED, effect, spread, level, 0.8))
    assert _simulated_power(PAIRED, effect, spread, n, level) >= 0.8 - 0.01
    assert _simulated_power(PAIRED, effect, spread, n - 1, level) < 0.8 + 0.01


def test_an_effect_beyond_a_thousand_seeds_is_out_of_reach():
    assert statistics.seeds_needed(PAIRED, 0.01, 1.0, 0.05, 0.8) == math.inf
    assert statistics.seeds_needed(PAIRED, 0.0, 1.0, 0.05, 0.8) == math.inf


def test_verdicts_say_which_case_they_are():
    analysis = AnalysisConfig(effect_of_interest=1.0)
    significant = statistics.in_families([statistics.compare("full", _series(FULL), "kd", _series(KD))], set(),
                                         0.05, 0.8)[0]
    assert statistics.verdict(significant, 0.05, 1.0) == "better than kd"
    tight = [v + 0.05 * (-1) ** i for i, v in enumerate(FULL)]  # differences of ±0.05: a precise null
    precise = statistics.in_families([statistics.compare("tight", _series(tight), "full", _series(FULL))], set(),
                                     0.05, 0.8)[0]
    assert statistics.verdict(precise, 0.05, analysis.effect_of_interest).startswith("no difference from full larger than")
    vague = statistics.in_families([statistics.compare("noisy", _series(NOISY), "full", _series(FULL))], set(),
                                   0.05, 0.8)[0]
    words = statistics.verdict(vague, 0.05, analysis.effect_of_interest)
    assert words.startswith("inconclusive at 5 seeds") and "needed" in words or "out of reach" in words
    assert "distinguishable" not in words
    shifted = [71.0, 72.5, 70.0, 73.0, 71.5]  # one point above `below` at every seed, exactly
    below = [70.0, 71.5, 69.0, 72.0, 70.5]
    same = statistics.in_families([statistics.compare("same", _series(shifted), "full", _series(below))], set(),
                                  0.05, 0.8)[0]
    assert not same.tested and same.delta == pytest.approx(1.0)
    assert statistics.verdict(same, 0.05, 1.0) == "the same Δ at each of 5 seeds: not testable"  # not "too few"
    assert "the same difference at every seed" in statistics.family_note([same], 0.05, 0.8, 1.0)
    few = statistics.in_families([statistics.compare("few", _series(FULL[:1], [0]), "full", _series(FULL))], set(),
                                 0.05, 0.8)[0]
    assert statistics.verdict(few, 0.05, 1.0) == "too few seeds to test"


def test_the_ablation_table_compares_each_pair_once_paired_and_saves_per_seed_values(tmp_path):
    ablation = AblationConfig(seeds=list(range(5)), reference="full", control="kd",
                              arms={"full": {}, "kd": {"loss.w_bc": 0.0}, "noisy": {"loss.tau": 0.2}})
    assert comparison_pairs(ablation) == [("kd", "full"), ("noisy", "full"), ("noisy", "kd")]
    analysis = AnalysisConfig(primary=["full vs kd"])
    rows = _rows({"full": FULL, "kd": KD, "noisy": NOISY})
    table = ablation_table(rows, ablation, analysis)
    by_name = {c.name: c for c in table.comparisons}
    assert all(c.test == PAIRED for c in table.comparisons)
    assert by_name["full vs kd"].family == "primary" and by_name["full vs kd"].family_size == 1
    assert by_name["full vs kd"].p_adjusted == pytest.approx(stats.ttest_rel(FULL, KD).pvalue)
    experiment = ExperimentConfig.model_validate({
        "name": "table", "data": {"name": "digits"}, "teacher": {"model": "resnet8"}, "student": {"model": "resnet8"},
        "ablation": ablation.model_dump(), "analysis": analysis.model_dump()})
    paths = write_table(rows, str(tmp_path), experiment)
    per_seed = pd.read_parquet(paths["ablation_per_seed.parquet"])
    assert len(per_seed) == 15 and set(per_seed.columns) == {"arm", "seed", "val_top1", "test_top1"}
    comparisons = pd.read_csv(paths["ablation_comparisons.csv"])
    assert list(comparisons.comparison) == ["full vs kd", "noisy vs full", "noisy vs kd"]
    markdown = open(paths["ablation.md"], encoding="utf-8").read()
    assert "paired t-tests" in markdown and "declared primary" in markdown and "p adj." in markdown
