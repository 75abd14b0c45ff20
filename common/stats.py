"""Intervals over training seeds: every headline figure is a distribution."""
from __future__ import annotations

import numpy as np


def ci95(values: list[float]) -> dict:
    """Mean and 95% confidence interval over seeds: Student t (scipy) with n-1 degrees of freedom,
    or the normal approximation when scipy is missing. One seed gives no interval (None)."""
    v = np.asarray([x for x in values if x is not None and not np.isnan(x)], dtype=float)
    n = len(v)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0, "method": None}
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1, "method": None}
    try:
        from scipy import stats  # lazy: scipy start-up, only for an interval over several seeds

        q, method = float(stats.t.ppf(0.975, n - 1)), "t"
    except ImportError:  # pragma: no cover - scipy is a dependency of scikit-learn
        q, method = 1.959964, "normal"
    half = q * float(v.std(ddof=1)) / np.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "method": method}
