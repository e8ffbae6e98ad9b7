"""One trial, one set of values, on every rank of a multi-process (DDP) trial.

Optuna knows nothing of ranks: each process that asks the study gets a trial of its own, with values of its own
(transformers #18609; with Lightning's `ddp`, every rank re-runs the script: optuna-integration #59). Here only
global rank 0 talks to the study, and every other rank receives what it drew. A search's processes run the same
loop in step: each turn, rank 0 decides the next trial (or that there is none), and every rank runs it.

How the others receive it depends on whether they exist yet:
- Lightning's own launcher (`strategy: ddp` on one machine) starts the other ranks during rank 0's first fit, by
  running the command again with its environment: they find the first trial in it (`TRIAL_ENV`).
- After a fit, and from the start when processes are started outside (N Slurm tasks, torchrun), the ranks share a
  process group, and rank 0 broadcasts; processes started outside join it before the first trial.
"""

import json
import os
from typing import Any

import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.utilities import rank_zero_only

TRIAL_ENV = "HFTRAIN_TUNE_TRIAL"


def is_rank_zero() -> bool:
    return rank_zero_only.rank == 0


def join_ranks() -> None:
    """Join the process group of processes started outside (N Slurm tasks of one worker, torchrun), so that rank 0
    can hand them the first trial; Lightning's DDP then uses this group. Nothing for one process, or for the ranks
    Lightning's launcher starts (they find the first trial in their environment)."""
    if dist.is_initialized() or TRIAL_ENV in os.environ:
        return
    if SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        environment = SLURMEnvironment()
    elif TorchElasticEnvironment.detect() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        environment = TorchElasticEnvironment()
    else:
        return
    os.environ.setdefault("MASTER_ADDR", environment.main_address)
    os.environ.setdefault("MASTER_PORT", str(environment.main_port))
    import torch

    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, rank=environment.global_rank(), world_size=environment.world_size())


def share(decision: Any) -> Any:
    """Rank 0's `decision` (a JSON value: the next trial, or None for the end), on every rank."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [decision if is_rank_zero() else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    if is_rank_zero():  # alone so far: ranks a launcher starts during the fit find it in their environment
        if decision is None:  # no fit follows: nothing to hand on, and nothing left for later child processes
            os.environ.pop(TRIAL_ENV, None)
        else:
            os.environ[TRIAL_ENV] = json.dumps(decision)
        return decision
    if TRIAL_ENV not in os.environ:
        raise RuntimeError(
            f"This rank of a search has no process group and no {TRIAL_ENV} to read its trial from: start the "
            "ranks with Lightning's launcher (trainer.strategy: ddp), Slurm tasks or torchrun."
        )
    return json.loads(os.environ.pop(TRIAL_ENV))


def done_sharing() -> None:
    """Forget the trial put in the environment for a launcher, once its fit started the other ranks."""
    if is_rank_zero():
        os.environ.pop(TRIAL_ENV, None)
