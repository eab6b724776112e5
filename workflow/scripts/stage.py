"""Run the unlearnflow stage named like the calling rule (see unlearnflow.cli.STAGES)."""

import sys
from pathlib import Path

# The library beside this workflow, so a checkout runs its own code.
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from unlearnflow.cli import run_from_snakemake  # noqa: E402

# The guard matters: img2dataset starts workers with "spawn", which re-imports
# the main script; unguarded, each worker would run the whole stage again.
if __name__ == "__main__":
    run_from_snakemake(snakemake)  # noqa: F821
