"""Every ``python train.py ...`` command in README.md and docs/*.md composes and passes start-up checks.

The commands are read from the Markdown itself (shell code blocks and inline code), so a renamed
config group, option or key fails here instead of in a reader's terminal. Each command is
composed in-process with Hydra's compose API (as tests/conftest.py does), resolved, and given to
the start-up checks (:func:`segtrain.run.validate_config`, :func:`segtrain.losses.build_loss`);
nothing trains and no network is built. A multirun (``-m``) is first loaded as Hydra loads a
sweep, then every job of a basic sweep (or one trial of an Optuna search, each searched key at
its lower bound) is composed on its own.

What the test does differently from a shell, all of it listed here:
- shell variables are replaced by the values in :data:`SHELL_VARS` (an unknown one fails);
- ``--cfg job`` and ``--help`` only print, so the rest of the command is composed as usual;
- ``make train ARGS="..."`` is composed as the Makefile's ``python train.py loss=bce_dice ...``;
- the inline mentions in :data:`MENTIONS` name the command in general and are not composed.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.types import RunMode
from omegaconf import OmegaConf

from segtrain.losses import build_loss
from segtrain.data_plan import leaves_to_data
from segtrain.run import validate_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Values the shell would put in for the variables that documented commands use.
SHELL_VARS = {"NODE_RANK": "0", "SLURM_JOB_ID": "123456", "SLURM_ARRAY_TASK_ID": "3"}
# Flags of a Hydra app that documented commands use -> how many values each takes.
PRINT_FLAGS = {"--help": 0, "--cfg": 1}
MULTIRUN_FLAGS = {"-m", "--multirun"}
# What `make train` runs before $(ARGS) (checked against the Makefile below).
MAKE_TRAIN = ["loss=bce_dice"]
# Inline code that names the command in prose rather than giving one.
MENTIONS = {"python train.py ..."}
LAUNCHERS = {"python", "python3", "torchrun", "srun"}
SHELL_FENCES = {"bash", "sh", "shell", "console", ""}


@dataclass(frozen=True)
class Command:
    source: str  # file:line
    text: str  # as written (continuations joined)
    args: tuple[str, ...]  # everything after train.py, shell-expanded

    def __str__(self) -> str:
        return f"{self.source}: {self.text}"


def _expand_vars(text: str, source: str) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in SHELL_VARS, f"{source}: shell variable ${name} in {text!r}: add a value to SHELL_VARS"
        return SHELL_VARS[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)


def _train_args(text: str, source: str) -> tuple[str, ...] | None:
    """The arguments after ``train.py`` in one shell command line, or None if it runs no train.py."""
    tokens = shlex.split(_expand_vars(text, source), comments=True)
    if tokens[:2] == ["make", "train"]:
        extra = [t.split("=", 1)[1] for t in tokens[2:] if t.startswith("ARGS=")]
        return (*MAKE_TRAIN, *(a for e in extra for a in shlex.split(e)))
    if "train.py" not in tokens:
        return None
    i = tokens.index("train.py")
    before = [t for t in tokens[:i] if not re.match(r"^\w+=", t)]  # drop VAR=value prefixes
    if not before or before[0] not in LAUNCHERS:
        return None  # e.g. prose that mentions train.py
    return tuple(tokens[i + 1:])


def _shell_lines(block: str, first_line: int):
    lines = block.split("\n")
    i = 0
    while i < len(lines):
        start, text = i, lines[i]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + lines[i].strip()
        yield first_line + start, text.strip()
        i += 1


def collect_commands() -> list[Command]:
    commands = []
    for path in DOCS:
        text = path.read_text()
        rel = path.relative_to(ROOT).as_posix()
        fences = list(re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M))
        for fence in fences:
            if fence.group(1) not in SHELL_FENCES:
                continue
            first = text.count("\n", 0, fence.start(2)) + 1
            for lineno, line in _shell_lines(fence.group(2), first):
                if line.startswith("#") or not line:
                    continue
                args = _train_args(line, f"{rel}:{lineno}")
                if args is not None:
                    commands.append(Command(f"{rel}:{lineno}", line, args))
        prose = text
        for fence in reversed(fences):  # blank the fences out, keeping line numbers
            prose = prose[:fence.start()] + re.sub(r"[^\n]", " ", fence.group(0)) + prose[fence.end():]
        for m in re.finditer(r"`([^`\n]*(?:python train\.py|make train)[^`\n]*)`", prose):
            if m.group(1) in MENTIONS:
                continue
            source = f"{rel}:{text.count(chr(10), 0, m.start()) + 1}"
            args = _train_args(m.group(1), source)
            if args is not None:
                commands.append(Command(source, m.group(1), args))
    return commands


COMMANDS = collect_commands()


def _split_flags(cmd: Command) -> tuple[bool, list[str]]:
    multirun, overrides, args = False, [], list(cmd.args)
    while args:
        arg = args.pop(0)
        if arg in MULTIRUN_FLAGS:
            multirun = True
        elif arg in PRINT_FLAGS:
            del args[:PRINT_FLAGS[arg]]
        elif arg.startswith("-"):
            pytest.fail(f"{cmd}: flag {arg!r} is not handled here; add it to PRINT_FLAGS or MULTIRUN_FLAGS")
        else:
            overrides.append(arg)
    return multirun, overrides


def _trial_value(value) -> str:
    """One value a sweeper could give a searched key: the lower bound, or the first choice."""
    if isinstance(value, (IntervalSweep, RangeSweep)):
        return str(value.start)
    if isinstance(value, ChoiceSweep):
        return str(value.list[0])
    return str(value)


def _jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of each job a ``-m`` run of ``overrides`` starts (one trial for Optuna)."""
    loader = GlobalHydra.instance().config_loader()
    sweep_cfg = loader.load_configuration("train", overrides, run_mode=RunMode.MULTIRUN)
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    sweeper = sweep_cfg.hydra.sweeper._target_
    if sweeper.endswith("BasicSweeper"):
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    assert sweeper.endswith("OptunaSweeper"), f"no rule for composing a trial of {sweeper}"
    # The search space: hydra.sweeper.params, then the command's own sweep overrides (which the
    # Optuna sweeper adds to it, replacing an entry of the same key).
    space = {key: parser.parse_override(f"{key}={spec}").value()
             for key, spec in OmegaConf.to_container(sweep_cfg.hydra.sweeper.params or {}).items()}
    space.update({o.get_key_element(): o.value() for o in parsed if o.is_sweep_override()})
    assert space, "an Optuna search with no searched keys"
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    return [fixed + [f"{key}={_trial_value(value)}" for key, value in space.items()]]


def test_the_docs_hold_the_commands():
    # A collector that silently found nothing would pass every check below.
    assert len(COMMANDS) >= 40, [str(c) for c in COMMANDS]
    sources = {c.source.split(":")[0] for c in COMMANDS}
    assert "README.md" in sources, sources
    assert any(c.args and c.args[0] in MULTIRUN_FLAGS for c in COMMANDS)


def test_make_train_is_train_py_with_the_default_loss():
    makefile = (ROOT / "Makefile").read_text()
    assert f"train.py {' '.join(MAKE_TRAIN)} $(ARGS)" in makefile


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.source)
def test_documented_command_composes(cmd, compose, tmp_path):
    multirun, overrides = _split_flags(cmd)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        jobs = _jobs(overrides) if multirun else [overrides]
    assert jobs, f"{cmd}: the sweep has no job"
    for job in jobs:
        cfg = compose(job, tmp_path / "run", tiny=False)
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        validate_config(cfg)
        if not leaves_to_data(cfg):  # task=auto / num_classes=auto: the loss is built once the masks are read
            build_loss(cfg.loss, cfg.task, cfg.num_classes)
