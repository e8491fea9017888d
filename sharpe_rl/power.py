"""How large a difference a paired comparison can see: read off its 95% interval, for "not distinguishable".

An interval that contains 0 says the sample could not tell the difference from noise, not that
there is none. These say how large a true difference the same comparison would have seen, and
how many pairs it would take to see a smaller one (evaluate-policy's headline and
bench/learning.py's pooled table).
"""

from __future__ import annotations

import math

from scipy.stats import norm


def detectable_difference(low: float, high: float, power: float = 0.8) -> float:
    """The smallest true difference that a comparison with this 95% interval sees (its interval excluding 0)
    with probability `power`: z(0.975) + z(power) standard errors, the standard error read off the interval's
    width (a normal approximation; 2.8 standard errors at 80%). "Not distinguishable" says little about a
    difference smaller than this: the sample was too small to see it."""
    z = norm.ppf(0.975)
    return float((z + norm.ppf(power)) * (high - low) / (2 * z))


def pairs_needed(pairs: int, low: float, high: float, difference: float, power: float = 0.8) -> int:
    """How many pairs a comparison like this one (`pairs` pairs, this interval) needs to see a true difference of
    `difference` with probability `power`: the standard error shrinks as one over the square root of the pairs."""
    return math.ceil(pairs * (detectable_difference(low, high, power) / abs(difference)) ** 2)
