"""Comparisons of arms over seeds that a statistician would sign: the right test, a declared family, the power.

- **Paired when the seeds match.** Arms trained at the same seed share initialisation, data order and views, so
  their per-seed differences are compared (paired t-test); Welch's t-test only where the seeds differ.
- **Families.** p-values are Holm-adjusted within a family: the comparisons an experiment declared as primary
  before any trial ran (`analysis.primary`), and every other comparison of the table as the exploratory family
  (or, with nothing declared, all of them as one family). Significance is read from the adjusted p only.
- **Power.** From the observed spread, each comparison states the smallest effect its test could detect with the
  analysis' power (80%) at α / m, Holm's strictest step (so the statement holds whatever the comparison's rank),
  and how many seeds the observed effect would need. A "no difference" is only said when that detectable effect is
  at most `analysis.effect_of_interest`; otherwise the comparison is inconclusive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd
from scipy import optimize, stats

PAIRED, WELCH = "paired t", "Welch t"
PRIMARY, EXPLORATORY, ALL = "primary", "exploratory", "all"
MAX_SEEDS_SEARCHED = 1_000  # beyond this many seeds an effect is called out of reach
_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Comparison:
    """`arm` against `baseline` on one metric, over seeds. Deltas are arm − baseline, in the metric's units."""
    arm: str
    baseline: str
    test: str               # PAIRED or WELCH ("" when untested: too few seeds, or no spread)
    n: int                  # seed pairs (paired) or the smaller arm's seeds (Welch)
    delta: float
    ci_low: float           # 95% interval of delta, not corrected for multiplicity
    ci_high: float
    p: float                # two-sided, raw
    spread: float           # SD of the per-seed differences (paired) or the pooled SD (Welch)
    family: str = ALL
    family_size: int = 0
    p_adjusted: float = math.nan
    detectable: float = math.nan    # smallest |delta| the test detects with `power` at alpha / family_size
    seeds_needed: float = math.nan  # seeds (per arm) for the observed |delta| to reach `power` at that level

    @property
    def name(self) -> str:
        return f"{self.arm} vs {self.baseline}"

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p)

    @property
    def constant_difference(self) -> bool:
        """Paired seeds whose differences are all equal (often all 0): a t-test has no spread to use."""
        return not self.tested and self.n >= 2 and self.spread == 0


def pair_key(a: str, b: str) -> frozenset[str]:
    """A comparison's identity, whichever way round it is written."""
    return frozenset((a, b))


def parse_comparison(text: str) -> tuple[str, str]:
    """'full vs kd_only' -> ('full', 'kd_only'); ValueError when it is not of that form."""
    parts = [part.strip() for part in text.split(" vs ")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise ValueError(f"'{text}' is not a comparison; write it as '<arm> vs <other arm>'")
    return parts[0], parts[1]


def compare(arm: str, values: pd.Series, baseline: str, baseline_values: pd.Series) -> Comparison:
    """`values` and `baseline_values` are indexed by seed. Paired on the common seeds when at least two seeds are
    common to both arms (seeds only one arm has are left out), else Welch over all of each arm's seeds."""
    common = values.index.intersection(baseline_values.index)
    if len(common) >= 2:
        return _paired(arm, baseline, values.loc[common].astype(float), baseline_values.loc[common].astype(float))
    return _welch(arm, baseline, values.astype(float), baseline_values.astype(float))


def _paired(arm: str, baseline: str, a: pd.Series, b: pd.Series) -> Comparison:
    differences = a - b
    n, delta, spread = len(differences), float(differences.mean()), float(differences.std(ddof=1))
    if spread == 0:  # the same difference at every seed: nothing to test it against
        return Comparison(arm, baseline, "", n, delta, math.nan, math.nan, math.nan, 0.0)
    test = stats.ttest_rel(a, b)
    interval = test.confidence_interval(_CONFIDENCE)
    return Comparison(arm, baseline, PAIRED, n, delta, float(interval.low), float(interval.high),
                      float(test.pvalue), spread)


def _welch(arm: str, baseline: str, a: pd.Series, b: pd.Series) -> Comparison:
    delta = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return Comparison(arm, baseline, "", min(len(a), len(b)), delta, math.nan, math.nan, math.nan, math.nan)
    test = stats.ttest_ind(a, b, equal_var=False)
    interval = test.confidence_interval(_CONFIDENCE)
    pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    return Comparison(arm, baseline, WELCH, min(len(a), len(b)), delta, float(interval.low), float(interval.high),
                      float(test.pvalue), pooled)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment within one family (scipy has only false-discovery-rate control): the k-th
    smallest of m p-values times (m - k + 1), never below the one before, at most 1. NaN (untested) stays NaN."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def in_families(comparisons: list[Comparison], primary: set[frozenset[str]], alpha: float,
                power: float) -> list[Comparison]:
    """Each comparison with its family, its Holm-adjusted p within that family, and its power figures."""
    def family_of(c: Comparison) -> str:
        if not primary:
            return ALL
        return PRIMARY if pair_key(c.arm, c.baseline) in primary else EXPLORATORY

    placed = [replace(c, family=family_of(c)) for c in comparisons]
    out = list(placed)
    for family in {c.family for c in placed}:
        members = [i for i, c in enumerate(placed) if c.family == family]
        size = sum(placed[i].tested for i in members)
        adjusted = holm([placed[i].p for i in members])
        for i, p_adjusted in zip(members, adjusted):
            c = replace(placed[i], family_size=size, p_adjusted=p_adjusted)
            out[i] = _with_power(c, alpha / max(size, 1), power) if c.tested else c
    return out


def _with_power(c: Comparison, level: float, power: float) -> Comparison:
    if c.spread == 0 or math.isnan(c.spread):
        return c
    return replace(c, detectable=detectable_effect(c.test, c.n, c.spread, level, power),
                   seeds_needed=seeds_needed(c.test, abs(c.delta), c.spread, level, power))


def detectable_effect(test: str, n: int, spread: float, level: float, power: float) -> float:
    """The smallest |delta| a two-sided test at `level` detects with probability `power`: n seed pairs (paired)
    or n seeds per arm (Welch, approximated by the equal-variance two-sample t-test at the pooled SD)."""
    upper = 1.0
    while power_of(test, n, upper, level) < power:  # grow the bracket until it holds the root
        upper *= 2
    size = optimize.brentq(lambda d: power_of(test, n, d, level) - power, 0.0, upper, xtol=1e-10)
    return float(size) * spread


def seeds_needed(test: str, effect: float, spread: float, level: float, power: float) -> float:
    """The fewest seeds (pairs, or per arm) at which a true |delta| of `effect` is detected with `power`; inf
    when the effect is 0 or would need more than MAX_SEEDS_SEARCHED. Power grows with n: a bisection on it."""
    if effect == 0 or power_of(test, MAX_SEEDS_SEARCHED, effect / spread, level) < power:
        return math.inf
    low, high = 1, MAX_SEEDS_SEARCHED  # high reaches the power; low stands for "not yet"
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if power_of(test, middle, effect / spread, level) >= power else (middle, high)
    return float(max(high, 2))


def power_of(test: str, n: int, effect_size: float, level: float) -> float:
    """Power of the two-sided t-test at `level` for a true |delta| / spread of `effect_size`, from the
    noncentral t distribution: n pairs (one-sample test on the differences) or n per arm (two-sample)."""
    if test == PAIRED:
        df, shift = n - 1, effect_size * math.sqrt(n)
    else:
        df, shift = 2 * n - 2, effect_size * math.sqrt(n / 2)
    critical = stats.t.ppf(1 - level / 2, df)
    lower_tail = stats.nct.cdf(-critical, df, shift)  # NaN where it underflows (large shifts): it is 0 there
    return float(stats.nct.sf(critical, df, shift) + (0.0 if math.isnan(lower_tail) else lower_tail))


def verdict(c: Comparison, alpha: float, effect_of_interest: float, unit: str = "points") -> str:
    """Words a reader can quote: better/worse at the adjusted p; otherwise what the test could have seen."""
    against = c.baseline
    if c.constant_difference:
        return f"the same Δ at each of {c.n} seeds: not testable"
    if not c.tested:
        return "too few seeds to test"
    if c.p_adjusted < alpha:
        return f"{'better' if c.delta > 0 else 'worse'} than {against}"
    if c.detectable <= effect_of_interest:
        return f"no difference from {against} larger than {c.detectable:.2f} {unit}"
    needed = "out of reach" if math.isinf(c.seeds_needed) else f"~{c.seeds_needed:.0f} needed for Δ {c.delta:+.2f}"
    return f"inconclusive at {c.n} seeds ({needed})"


def per_seed(rows: pd.DataFrame, arm: str, metric: str) -> pd.Series:
    """One arm's values of `metric` indexed by seed (a seed's mean if it ran twice)."""
    group = rows[rows.arm == arm]
    return group.groupby("seed")[metric].mean()


def format_p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def family_note(comparisons: list[Comparison], alpha: float, power: float, effect_of_interest: float,
                unit: str = "points") -> str:
    """The sentence under a table: which test, which families, how power was computed."""
    tests = sorted({c.test for c in comparisons if c.test})
    families = {}
    for c in comparisons:
        if c.tested:
            families.setdefault(c.family, []).append(c.name)
    if not families:
        if any(c.constant_difference for c in comparisons):
            return ("Nothing was tested: each comparison had too few seeds or the same difference at every seed "
                    "(no spread for a t-test).")
        return "No comparison had two or more seeds per side: nothing was tested."
    family_text = "; ".join(
        f"{'declared primary before any trial ran' if f == PRIMARY else 'exploratory (everything not declared)' if f == EXPLORATORY else 'every comparison shown'}"
        f" ({len(names)}: {', '.join(names)})" for f, names in sorted(families.items(), key=lambda kv: kv[0] != PRIMARY))
    test_text = " and ".join(
        {PAIRED: "paired t-tests on the per-seed differences (the arms ran the same seeds)",
         WELCH: "Welch t-tests (the seeds differ)"}[t] for t in tests)
    return (f"Tests: {test_text}; the interval is the 95% interval of Δ, uncorrected. p is raw, p adj. is "
            f"Holm-adjusted within its family: {family_text}. Verdicts use p adj. at α = {alpha:g}. "
            f"\"detectable\" is the smallest |Δ| the test would find with {power:.0%} power at α / m (Holm's "
            f"strictest step, m the family's size) given the observed spread; a difference is only called absent "
            f"when that is at most {effect_of_interest:g} {unit} (analysis.effect_of_interest), otherwise the "
            "comparison is inconclusive and the seeds its observed Δ would need are shown.")
