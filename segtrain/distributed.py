"""DDP from a Hydra entry point: one run folder for all ranks, and multiruns that stay correct.

How Lightning starts DDP (lightning 2.6, checked in ``_SubprocessScriptLauncher``): with
``strategy=ddp`` the process you started becomes rank 0 and re-runs ``sys.argv`` once per extra
local rank. When Hydra is initialised it appends ``hydra.run.dir=<this run's folder>
hydra.job.name=train_ddp_process_<k> hydra.output_subdir=null`` to the children's command line,
so in a *single* run every rank composes the same config, writes to the same folder and only
rank 0 saves ``.hydra/``. Two cases break and are handled here:

1. **Inside a multirun** (``-m``) the children's command line is still the *sweep's* command line
   (``-m loss=bce,dice ...``): every child would run the whole sweep (Lightning #11300, Hydra
   #2070). ``segtrain.lightning_compat.multirun_ddp_scope`` (the Lightning side of the
   workaround, with the Lightning versions it serves) gives the children the *job's* own
   overrides and folder (:func:`job_argv`) through :data:`RELAUNCH_ENV`, and
   :func:`startup_argv` (called by ``train.py`` before Hydra parses anything) swaps them in:
   each child becomes a single run of exactly that job, in that job's folder. After the job the
   scope puts back the environment Lightning changed (``LOCAL_RANK``, ``WORLD_SIZE``,
   ``MASTER_PORT`` ...) and destroys the process group; otherwise the next job would believe its
   ranks were started externally and wait forever. A rank that crashes fails only its job:
   Lightning's child watchdog, which SIGKILLs the main process (here: the whole sweep), is
   swapped for one that only stops the job's children.
2. **Processes started by someone else** (``torchrun``, ``srun``, a manual multi-node launch
   with ``NODE_RANK``): every process runs Hydra on its own, so each would resolve ``${now:...}``
   to its own timestamped folder, and a multirun would run the whole sweep in every process.
   :func:`startup_argv` requires an explicit ``hydra.run.dir=...`` there, refuses ``-m``
   (use ``hydra/launcher=slurm``, whose SLURM tasks each run one job), and keeps ranks > 0 from
   writing ``.hydra/`` and sharing rank 0's log file (same overrides Lightning uses).

Only rank 0 writes files: use :func:`is_global_zero` before the Trainer exists (it reads the
launchers' environment variables) and ``trainer.is_global_zero`` afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

#: Environment variable through which a multirun job hands its own command line to its DDP children.
RELAUNCH_ENV = "SEGTRAIN_DDP_JOB_ARGV"

# Flags that choose the primary config: children must use the same one.
_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
_MULTIRUN_FLAGS = ("-m", "--multirun")
# Hydra overrides that only concern logging: kept for the children (sweep/launcher ones are not).
_KEEP_HYDRA_PREFIXES = ("hydra/job_logging", "hydra/hydra_logging", "hydra.job_logging",
                        "hydra.hydra_logging", "hydra.verbose")


def env_global_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's global rank from the launchers' environment variables (0 when none is set).

    ``RANK`` (torchrun), ``SLURM_PROCID`` (srun, when SLURM runs more than one task), else
    ``NODE_RANK * local world size + LOCAL_RANK`` (Lightning's own launcher, manual multi-node).
    Zero exactly in the process that becomes global rank 0, before the Trainer exists (the number
    itself may be off for Lightning-launched multi-node runs, which do not set
    ``LOCAL_WORLD_SIZE``); afterwards prefer ``trainer.global_rank``.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env:
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    local = int(env.get("LOCAL_RANK", "0"))
    node = int(env.get("NODE_RANK", env.get("GROUP_RANK", "0")))
    per_node = int(env.get("LOCAL_WORLD_SIZE", "1"))
    return node * per_node + local if node else local


def is_global_zero(trainer=None) -> bool:
    """True in the one process that writes files (config copies, pictures, summaries)."""
    if trainer is not None:
        return bool(trainer.is_global_zero)
    return env_global_rank() == 0


def external_world_size(environ: Mapping[str, str] | None = None) -> int:
    """Number of processes a cluster launcher started for this run (1 when none did).

    torchrun sets ``TORCHELASTIC_RUN_ID`` and ``WORLD_SIZE``; srun sets ``SLURM_NTASKS``
    (Lightning's SLURM detection also skips interactive job names -- ours is only used to decide
    about folders, where counting tasks is the safe side).
    """
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" in env:
        return int(env.get("WORLD_SIZE", "1"))
    if "SLURM_PROCID" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return int(env.get("SLURM_NTASKS", "1"))
    return 1


def _has_override(argv: Sequence[str], key: str) -> bool:
    return any(a.lstrip("+~").startswith(key + "=") for a in argv)


def startup_argv(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """The command line ``train.py`` should hand to Hydra in this process (see the module docstring).

    Args:
        argv: ``sys.argv`` (script first).
        environ: the environment (default ``os.environ``).

    Returns:
        ``argv`` unchanged for an ordinary run; a multirun job's own command line in its DDP
        children; extra ``hydra.output_subdir=null hydra.job.name=train_rank<r>`` for ranks > 0
        started by torchrun/srun.

    Raises:
        ValueError: a multirun inside torchrun/srun, or several externally started processes (or
            ``NODE_RANK`` set) without an explicit ``hydra.run.dir``.
    """
    env = os.environ if environ is None else environ
    argv = list(argv)
    # 1. A DDP child of a multirun job: become a single run of that job (only children have
    #    LOCAL_RANK > 0; the job's own process is rank 0 and keeps its command line).
    if RELAUNCH_ENV in env and env.get("LOCAL_RANK", "0") != "0":
        job_argv = json.loads(env[RELAUNCH_ENV])
        return [argv[0], *job_argv, f"hydra.job.name=train_ddp_process_{env['LOCAL_RANK']}"]

    world = external_world_size(env)
    # -m, or a config group that turns multirun on by itself (conf/hparams_search sets hydra.mode).
    multirun = any(a in _MULTIRUN_FLAGS or a.startswith("hparams_search=") for a in argv[1:])
    if multirun and world > 1:
        raise ValueError(
            f"This multirun (-m) was started in {world} processes by torchrun/srun: every process "
            "would run the whole sweep. Start the sweep once, without torchrun/srun, and let the "
            "launcher start each job's ranks: `python train.py -m hydra/launcher=slurm trainer=ddp "
            "...` (one SLURM job per sweep job, tasks_per_node = GPUs), or on one machine "
            "`python train.py -m trainer=ddp ...` (Lightning starts each job's ranks)."
        )
    if multirun:
        return argv
    if (world > 1 or "NODE_RANK" in env) and not _has_override(argv[1:], "hydra.run.dir"):
        raise ValueError(
            "Several processes were started for this run (torchrun, srun or a multi-node launch "
            "with NODE_RANK) but no hydra.run.dir was given: each process would create its own "
            "timestamped folder. Pass the same folder to every process, e.g. "
            "hydra.run.dir=logs/runs/slurm_${SLURM_JOB_ID} (a shell variable) or "
            "hydra.run.dir=logs/runs/two_node_01."
        )
    rank = env_global_rank(env)
    if world > 1 and rank > 0:
        # Same as Lightning does for its own children: no .hydra/ copy, a log file of its own.
        if not _has_override(argv[1:], "hydra.output_subdir"):
            argv.append("hydra.output_subdir=null")
        if not _has_override(argv[1:], "hydra.job.name"):
            argv.append(f"hydra.job.name=train_rank{rank}")
    return argv


def is_multirun() -> bool:
    """True inside a Hydra multirun job (``-m``); False for single runs and outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_argv(original_argv: Sequence[str]) -> list[str]:
    """Command line (without the script) that re-creates the current multirun job as a single run.

    The job's own overrides (``hydra.overrides.task``: the sweep's fixed overrides plus this
    job's swept values), the primary-config flags of the original command line, its logging
    overrides, and ``hydra.run.dir=<the job's folder> hydra.output_subdir=null hydra.mode=RUN``.
    """
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    out: list[str] = []
    args = list(original_argv[1:])
    for i, a in enumerate(args):
        flag = a.split("=", 1)[0]
        if flag in _CONFIG_FLAGS:
            out.append(a)
            if "=" not in a and i + 1 < len(args):
                out.append(args[i + 1])
    out += [o for o in hc.overrides.hydra if o.startswith(_KEEP_HYDRA_PREFIXES)]
    out += list(hc.overrides.task)
    # hydra.mode=RUN: a config can switch multirun on by itself (hparams_search sets hydra.mode).
    out += [f"hydra.run.dir={json.dumps(str(hc.runtime.output_dir))}", "hydra.output_subdir=null", "hydra.mode=RUN"]
    return out
