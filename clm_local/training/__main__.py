"""`python -m clm_local.training BASE DATA -o CKPT [options]`: `clm-local train` as a module, which is
what `torchrun --nproc-per-node K -m clm_local.training ...` starts in each process."""

import sys

from clm_local.cli.main import run

if __name__ == "__main__":
    sys.argv[:1] = ["python -m clm_local.training", "train"]
    run()
