"""The check behind ``scripts/gpu_check.sh --dry-run``: would every step's command start? No GPU needed.

    python scripts/gpu_check_dry.py MANIFEST RESULTS

MANIFEST has one step a line, tab-separated: name, figure spec (``kind arg ...``), script, its
arguments. Every step is checked in this one process (imports are paid once):

- ``train.py``: the overrides compose with conf/train.yaml (Hydra's compose API: the command
  line's grammar and config), the config passes segtrain's start-up checks, the module
  (network, loss, optimizer) builds on the CPU, and every ``trainer`` key, ``trainer.precision``
  included, is one ``lightning.pytorch.Trainer`` accepts;
- any other script: its ``main(argv)`` runs up to its argument parser (argparse or
  ``segtrain.inference.parse_overrides``) and stops right after a successful parse, so nothing
  touches a device; ``scripts/bench_train.py``'s Hydra overrides are then checked as for train.py;
- the figure spec names a kind that scripts/gpu_check_figures.py knows.

Writes ``name<TAB>DRY-OK|FAIL<TAB>what was checked, or why it failed`` per step to RESULTS;
exit status 1 if any step failed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import io
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from gpu_check_figures import KINDS  # noqa: E402


class CheckFailed(Exception):
    """The step's command would not start; the message says why."""


class _Parsed(Exception):
    """Raised by the patched parsers: the arguments parsed, stop before the script does any work."""

    def __init__(self, parsed) -> None:
        super().__init__("parsed")
        self.parsed = parsed


def _flatten(annotation) -> list:
    args = typing.get_args(annotation)
    return [leaf for a in args for leaf in _flatten(a)] if args else [annotation]


def check_trainer(trainer_cfg) -> None:
    """Every key is a Trainer argument and the precision one Trainer's signature allows."""
    from lightning.pytorch import Trainer

    params = inspect.signature(Trainer.__init__).parameters
    unknown = sorted(k for k in trainer_cfg if k != "_target_" and k not in params)
    if unknown:
        raise CheckFailed(f"trainer keys that lightning.pytorch.Trainer does not take: {', '.join(unknown)}")
    precision = trainer_cfg.get("precision")
    hint = typing.get_type_hints(Trainer.__init__).get("precision")
    allowed = list(dict.fromkeys(str(a) for a in _flatten(hint) if a is not type(None)))  # 16 and "16" alike
    if precision is not None and allowed and str(precision) not in allowed:
        raise CheckFailed(f"trainer.precision={precision} is not one of {', '.join(map(str, allowed))}")


def check_train_overrides(overrides: list[str]) -> str:
    """Compose ``overrides`` as train.py would, run the start-up checks, build the module on the CPU."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from segtrain.run import build_module, validate_config

    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            # The run folder is Hydra's at run time; a placeholder lets every ${paths.output_dir} resolve.
            cfg = compose(config_name="train", overrides=[*overrides, "paths.output_dir=/gpu_check_dry_run"])
        validate_config(cfg)
        check_trainer(cfg.trainer)
        module = build_module(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise CheckFailed(f"{type(err).__name__}: {str(err).strip().splitlines()[0]}") from None
    params = sum(p.numel() for p in module.parameters()) / 1e6
    return (f"composes; {cfg.trainer.accelerator} {cfg.trainer.precision} strategy={cfg.trainer.strategy} "
            f"devices={cfg.trainer.devices}; {cfg.model.get('arch', '?')}/{cfg.model.get('encoder_name', '?')} {params:.1f} M params builds")


def _load(script: Path):
    spec = importlib.util.spec_from_file_location(f"gpu_check_dry_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _swapped(owner, name: str, value):
    """Replace ``owner.name`` with ``value`` for the block (a dry run stops each script after its parser)."""
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def parse_only(script: Path, argv: list[str]):
    """``(module, parsed arguments)``: the script's main(argv) stopped right after its parser."""
    module = _load(script)
    real_parse_args = argparse.ArgumentParser.parse_args

    def stop_after_argparse(self, args=None, namespace=None):
        raise _Parsed(real_parse_args(self, args, namespace))

    stderr = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_swapped(argparse.ArgumentParser, "parse_args", stop_after_argparse))
        if hasattr(module, "parse_overrides"):
            real_parse_overrides = module.parse_overrides

            def stop_after_overrides(*args, **kwargs):
                raise _Parsed(real_parse_overrides(*args, **kwargs))

            stack.enter_context(_swapped(module, "parse_overrides", stop_after_overrides))
        stack.enter_context(contextlib.redirect_stderr(stderr))
        stack.enter_context(_swapped(sys, "argv", [str(script), *argv]))  # argparse's prog name
        try:
            module.main(argv)
        except _Parsed as done:
            return module, done.parsed
        except SystemExit as exit_:
            lines = stderr.getvalue().strip().splitlines()
            raise CheckFailed(lines[-1] if lines else f"exit status {exit_.code}") from None
        except ValueError as err:
            raise CheckFailed(str(err).splitlines()[0]) from None
    raise CheckFailed(f"{script.name}: main() returned without parsing its arguments; the dry run cannot check it")


def check_step(figure_spec: str, script: str, argv: list[str]) -> str:
    kind = figure_spec.split()[0] if figure_spec.split() else ""
    if kind not in KINDS:
        raise CheckFailed(f"figure kind {kind!r} unknown to gpu_check_figures.py ({', '.join(KINDS)})")
    if Path(script).name == "train.py":
        return check_train_overrides(argv)
    path = ROOT / script
    if not path.is_file():
        raise CheckFailed(f"{script} does not exist")
    module, parsed = parse_only(path, argv)
    overrides = getattr(parsed, "overrides", None)
    if overrides is not None:  # bench_train.py: Hydra overrides as positional arguments
        quick = list(getattr(module, "QUICK_OVERRIDES", [])) if getattr(parsed, "quick", False) else []
        return "arguments parse; " + check_train_overrides(quick + list(overrides))
    return "arguments parse"


def main(argv: list[str] | None = None) -> int:
    manifest, results = (sys.argv[1:] if argv is None else argv)
    failed = 0
    with open(results, "w") as out:
        for line in Path(manifest).read_text().splitlines():
            if not line.strip():
                continue
            name, figure_spec, script, *args = line.split("\t")
            try:
                result, text = "DRY-OK", check_step(figure_spec, script, args)
            except CheckFailed as err:
                result, text, failed = "FAIL", str(err), failed + 1
            except Exception as err:  # noqa: BLE001 -- any error fails this step, not the whole dry run
                first = (str(err).strip().splitlines() or [""])[0]
                result, text, failed = "FAIL", f"{type(err).__name__}: {first}", failed + 1
            text = text.replace("\t", " ").replace("\n", " ")
            print(f"  {name}: {result}: {text}", flush=True)
            out.write(f"{name}\t{result}\t{text}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
