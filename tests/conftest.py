"""Suite-wide settings: Hypothesis profiles, selected by HYPOTHESIS_PROFILE.

``dev`` (the default) keeps a local run quick; ``ci`` searches more examples and is
derandomized so that a CI failure reproduces exactly. ``make test`` selects ``ci``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
