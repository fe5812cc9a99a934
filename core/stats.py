"""The one mean and standard error every report uses (the loop's held-out reward, `teachedit styles`, the sweep
and eval tables)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_sem(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n)); the error is 0.0 for one
    value, and both are NaN for none (there is nothing to report, and a table shows it as such)."""
    if not values:
        return math.nan, math.nan
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)
