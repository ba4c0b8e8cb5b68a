import os

from hypothesis import HealthCheck, settings

# "ci": enough examples to matter, derandomized so a CI run is reproducible.
settings.register_profile("ci", max_examples=200, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
# "thorough": fifteen times ci, for long runs (HYPOTHESIS_PROFILE=thorough make test)
settings.register_profile("thorough", max_examples=3000, derandomize=False, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# The test process is an API user: it opts in to the freed-memory policy the command line
# applies (wageubn_sim/memory.py; without it glibc's defaults page-fault every temporary anew,
# which made a fresh-clone run 942 s of pytest instead of about 510 s here)
import wageubn_sim  # noqa: E402

wageubn_sim.keep_freed_memory()
