"""Cohort statistics: a lesion rate per patient-year from a negative binomial model, and a share with its interval.

New T2 lesion counts are overdispersed (a few patients have many), so the cohort rate is the maximum
likelihood rate of an intercept-only negative binomial model (NB2: variance mu + alpha mu^2) with log
follow-up years as offset, mu_i = rate * years_i. Its interval is the Wald interval on log(rate); in NB2
the rate and alpha are orthogonal, so the information of log(rate) is sum(mu_i / (1 + alpha mu_i)).
Pure functions; scipy is imported inside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# log(alpha) is searched in [-20, 5]: alpha = 2e-9 is Poisson for any count seen here, 148 is beyond any cohort;
# alpha is set to 0 (Poisson) below 1e-6 or where the Poisson likelihood is as high as the best negative binomial one
LOG_ALPHA_BOUNDS = (-20.0, 5.0)


@dataclass(frozen=True)
class RateEstimate:
    """Events per year over a cohort; `lower`/`upper` None where no interval can be given (no events)."""

    rate_per_year: float
    lower: float | None
    upper: float | None
    dispersion: float | None  # NB2 alpha; 0 when the counts are not overdispersed (Poisson), None when not fitted
    pooled_rate_per_year: float  # sum(counts) / sum(years)
    patients: int
    events: int
    years: float
    method: str  # one sentence for the page and cohort.json


@dataclass(frozen=True)
class Share:
    """`count` of `total` patients, with the Wilson score interval (None bounds when `total` is 0)."""

    count: int
    total: int
    fraction: float | None
    lower: float | None
    upper: float | None


def negative_binomial_rate(counts: list[int], years: list[float], *, confidence_level: float) -> RateEstimate:
    """Events per year: the NB2 maximum likelihood rate with log(years) as offset, and its Wald interval.

    Parameters
    ----------
    counts : events per patient (non-negative integers).
    years : each patient's follow-up (> 0), in the same order.
    confidence_level : e.g. 0.95.

    Returns
    -------
    RateEstimate. With equal follow-up times the rate is mean(counts) / years (the NB score equation
    then reads sum(y - mu) = 0). With no events the rate is 0 and no interval is given.

    Raises
    ------
    ValueError : no patients, lengths differ, a negative count or a follow-up that is not positive.

    >>> round(negative_binomial_rate([0, 1, 5], [2.0, 2.0, 2.0], confidence_level=0.95).rate_per_year, 9)
    1.0
    """
    if not counts or len(counts) != len(years):
        raise ValueError(f"a rate needs one follow-up per count and at least one patient (got {len(counts)} counts, "
                         f"{len(years)} follow-ups)")
    if any(count < 0 for count in counts) or any(not year > 0 for year in years):
        raise ValueError("counts must be >= 0 and follow-up years > 0")
    events, total_years = int(sum(counts)), float(sum(years))
    pooled = events / total_years
    common = {"pooled_rate_per_year": pooled, "patients": len(counts), "events": events, "years": total_years}
    if events == 0:
        return RateEstimate(0.0, None, None, None, method="no events: rate 0, no model fitted", **common)
    import numpy as np
    from scipy import optimize, special, stats

    y, t = np.asarray(counts, float), np.asarray(years, float)

    def log_rate_given(alpha: float) -> float:
        """The root of the score in log(rate), sum((y - mu) / (1 + alpha mu)): decreasing, positive at mu -> 0."""
        def score(log_rate):
            mu = np.exp(log_rate) * t
            return float(np.sum((y - mu) / (1.0 + alpha * mu)))
        return optimize.brentq(score, math.log(pooled) - 30, math.log(pooled) + 30, xtol=1e-13)

    def negative_log_likelihood(log_rate: float, alpha: float) -> float:
        mu = np.exp(log_rate) * t
        if alpha == 0.0:
            return float(-np.sum(y * np.log(mu) - mu - special.gammaln(y + 1)))
        size = 1.0 / alpha
        return float(-np.sum(special.gammaln(y + size) - special.gammaln(size) - special.gammaln(y + 1)
                             + size * np.log(size / (size + mu)) + y * np.log(mu / (size + mu))))

    def profile(log_alpha: float) -> float:
        alpha = math.exp(log_alpha)
        return negative_log_likelihood(log_rate_given(alpha), alpha)

    fit = optimize.minimize_scalar(profile, bounds=LOG_ALPHA_BOUNDS, method="bounded", options={"xatol": 1e-6})
    alpha = float(math.exp(fit.x))
    if alpha < 1e-6 or negative_log_likelihood(math.log(pooled), 0.0) <= fit.fun + 1e-7:
        alpha = 0.0  # not overdispersed: the Poisson maximum likelihood rate is exactly the pooled one
    log_rate = math.log(pooled) if alpha == 0.0 else log_rate_given(alpha)
    mu = math.exp(log_rate) * t
    standard_error = 1.0 / math.sqrt(float(np.sum(mu / (1.0 + alpha * mu))))
    z = float(stats.norm.ppf(0.5 + confidence_level / 2))
    rate = float(math.exp(log_rate))
    method = (f"negative binomial (NB2) maximum likelihood, log follow-up years as offset, dispersion {alpha:.3g}; "
              f"{confidence_level:.0%} Wald interval on the log rate" if alpha else
              f"Poisson (no overdispersion: the negative binomial dispersion went to 0); {confidence_level:.0%} Wald "
              f"interval on the log rate")
    return RateEstimate(rate, math.exp(log_rate - z * standard_error), math.exp(log_rate + z * standard_error),
                        alpha, method=method, **common)


def wilson_share(count: int, total: int, *, confidence_level: float) -> Share:
    """`count` of `total` as a fraction with its Wilson score interval (Wilson, J Am Stat Assoc 1927).

    >>> share = wilson_share(8, 10, confidence_level=0.95)
    >>> round(share.lower, 3), round(share.upper, 3)
    (0.49, 0.943)
    """
    if total == 0:
        return Share(count, total, None, None, None)
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + confidence_level / 2))
    fraction = count / total
    centre = (fraction + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(fraction * (1 - fraction) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    # rounding can put a bound a hair past the fraction at 0 or `total` (Wilson's bounds hold it exactly)
    return Share(count, total, fraction, min(fraction, max(0.0, centre - half)), max(fraction, min(1.0, centre + half)))
