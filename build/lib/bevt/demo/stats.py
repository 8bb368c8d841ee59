"""Uncertainty of the demo's numbers: spread over seeds, and paired differences with 95% intervals.

A demo accuracy varies for two reasons: the seed (initialisation, data order, masks: a run is one
draw of the training procedure) and the validation set (a finite sample of the task's clips). A
comparison of methods A and B on one task uses the per-video correctness of both on the same
validation clips, for every seed. Write d[s, i] = correct_A[s, i] - correct_B[s, i] for seed s and
video i, and model it as  d = mu + u_s + v_i + e_si  (seed effect, video effect, interaction).
mu, the expected difference over seeds and clips of this kind, is estimated by the mean D of d;

    Var(D) = var(u) / S + var(v) / n + var(e) / (S n),

estimated from the two-way layout: the variance of the per-seed means over S (holds var(u) +
var(e)/n), plus that of the per-video means over n (holds var(v) + var(e)/S) less the residual
mean square over S n (so var(e) is counted once). The interval is D +- t * sqrt(Var) with t the
Student quantile at S - 1 degrees of freedom: a t-interval over seeds whose variance also holds
the validation set's share, which stays the same in every seed and so never shows in the spread
over seeds. With one seed it is the paired binomial interval (t at n - 1 degrees of freedom):
validation noise only, and the report says so. Why not a two-level bootstrap: with 3 seeds a
bootstrap over seeds sees 10 distinct resamples and under-covers; why not Welch-Satterthwaite
degrees of freedom: estimated from 2-df variances they are too optimistic (90% coverage in the
simulations of tests/test_demo.py, against 94-97% here; the S - 1 rule is conservative, up to
99.5%, only when a difference varies more over clips than over seeds). Pairing matters: clips
that are hard for A are usually hard for B, so the video effect of a difference is much smaller
than that of either accuracy.
"""

from __future__ import annotations

import functools
import math

import numpy as np

LEVEL = 0.95


def mean_and_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


@functools.lru_cache(maxsize=None)
def t_quantile(probability: float, df: float) -> float:
    """Student t quantile for probability in (0.5, 1) and df > 0 (real): bisection on the CDF,
    integrated numerically from the density (numpy has no t distribution; scipy is not a dependency)."""
    if math.isinf(df) or df > 1e6:
        df = 1e6
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        grid = np.linspace(0.0, x, 4001)
        density = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid**2 / df))
        return 0.5 + float(np.sum((density[1:] + density[:-1]) / 2) * (grid[1] - grid[0]))

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        low, high = high, high * 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return (low + high) / 2


def paired_difference(correct_a, correct_b, level: float = LEVEL) -> dict:
    """Mean difference of accuracies (points) of A and B and its `level` interval.

    `correct_a`, `correct_b`: (seeds, videos) 0/1 arrays (lists), same videos in the same order
    within each seed. -> {"difference", "low", "high", "seeds", "videos", "df",
    "seed_sd" (sd over seeds of the per-seed differences, points)}.
    """
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] < 2:
        raise ValueError(f"need two (seeds, videos) arrays of one shape with >= 2 videos, got {a.shape} and {b.shape}")
    d = a - b
    seeds, videos = d.shape
    per_seed, per_video, mean = d.mean(1), d.mean(0), d.mean()
    video_term = per_video.var(ddof=1) / videos  # var(v)/n + var(e)/(S n)
    if seeds == 1:  # the paired binomial interval: validation noise only
        half_sq = t_quantile(0.5 + level / 2, videos - 1) ** 2 * video_term
    else:
        residual = d - per_seed[:, None] - per_video[None, :] + mean
        interaction = (residual**2).sum() / ((seeds - 1) * (videos - 1))  # var(e)
        seed_term = per_seed.var(ddof=1) / seeds  # var(u)/S + var(e)/(S n)
        variance = seed_term + max(video_term - interaction / (seeds * videos), 0.0)
        half_sq = t_quantile(0.5 + level / 2, seeds - 1) ** 2 * variance
    half = math.sqrt(half_sq)
    return {"difference": 100 * mean, "low": 100 * (mean - half), "high": 100 * (mean + half),
            "seeds": seeds, "videos": videos, "seed_sd": 100 * float(per_seed.std(ddof=1)) if seeds > 1 else 0.0}


def verdict(interval: dict, a: str, b: str) -> str:
    """What the interval supports: an ordering, or none ("not resolved at this scale"). One seed
    measures no seed-to-seed noise, so it supports no ordering."""
    if interval["seeds"] < 2:
        return "one seed: not resolved"
    if interval["low"] > 0:
        return f"{a} ahead of {b}"
    if interval["high"] < 0:
        return f"{a} behind {b}"
    return "not resolved at this scale"
