"""Run the unlearnflow stage named like the calling rule (see unlearnflow.cli.STAGES)."""

import os
import sys
from pathlib import Path

# torch's OpenMP threads busy-wait by default: beside another job on the same
# cores that made a training step 13x slower. A one-thread job has no team to
# wait for; a job given several threads owns that many cores (Snakemake sums
# threads to --cores), where passive waits made a text-to-image training step
# 1.6x slower, no faster than one thread (benchmarks/omp_wait.py). Set
# before torch is imported.
if snakemake.threads == 1:  # noqa: F821
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Exactly the job's threads (torch reads these when it starts its pools), so
# that jobs side by side never oversubscribe the cores Snakemake gave them.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(snakemake.threads)  # noqa: F821

# The library beside this workflow, so a checkout runs its own code (not an
# editable install of another). scriptdir reads ".../workflow/rules/../scripts":
# resolve it before walking up.
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))  # noqa: F821

from unlearnflow.cli import run_from_snakemake  # noqa: E402

# The guard matters: img2dataset starts workers with "spawn", which re-imports
# the main script; unguarded, each worker would run the whole stage again.
if __name__ == "__main__":
    run_from_snakemake(snakemake)  # noqa: F821
