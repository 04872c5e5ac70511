"""Command line: `stagealign run | demo | measure | world show`.

Errors a user can fix (config typos, bad data rows, missing models) print one line and exit
with code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from stagealign.config import ConfigError, RunConfig, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Stage-aware preference alignment: measure the boundary score, pick static or on-policy "
                       "data per iteration, train with DPO / SLiC-HF / IPO (TRL), evaluate and report.")
world_app = typer.Typer(no_args_is_help=True, help="Inspect the built-in synthetic world.")
app.add_typer(world_app, name="world")

_DEBUG = {"on": False}
Overrides = Annotated[Optional[list[str]], typer.Argument(help="overrides such as training.beta=0.2", show_default=False)]


def _user_errors() -> tuple[type[BaseException], ...]:
    from stagealign.artifacts import ArtifactError
    from stagealign.judges.base import JudgeError
    from stagealign.policy import PolicyError
    from stagealign.training.common import NumericsError

    errors: list[type[BaseException]] = [ConfigError, ArtifactError, JudgeError, PolicyError, NumericsError,
                                         FileNotFoundError, ValueError]
    try:
        from stagealign.data.loaders import LoaderError

        errors.append(LoaderError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _guard(fn):
    try:
        return fn()
    except _user_errors() as exc:
        if _DEBUG["on"]:
            raise
        msg = str(exc).strip() or type(exc).__name__
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2) from None


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for errors")] = False) -> None:
    _DEBUG["on"] = debug
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from stagealign.training.common import quiet_libraries

    quiet_libraries()


def _run(cfg: RunConfig) -> dict:
    from stagealign.pipeline import Run
    from stagealign.ui import RichUI

    return Run(cfg, ui=RichUI()).execute()


@app.command()
def run(config: Annotated[Path, typer.Argument(help="YAML run config")], overrides: Overrides = None,
        resume: Annotated[bool, typer.Option("--resume", help="require an existing run directory to continue")] = False,
        ) -> None:
    """Run (or resume) the stage-aware iteration loop described by CONFIG.

    Re-running the same command after an interruption continues where it stopped: finished
    stages are recorded in RUN_DIR/state.json and not redone.
    """
    def go():
        cfg = load_config(config, overrides or [])
        if resume and not (Path(cfg.run_dir) / "state.json").is_file():
            raise ConfigError(f"{cfg.run_dir}: nothing to resume (no state.json)")
        summary = _run(cfg)
        from stagealign.report import iteration_table

        typer.echo(iteration_table([summary]))
    _guard(go)


@app.command()
def demo(out: Annotated[Path, typer.Option(help="directory for the demo runs")] = Path("runs/demo"),
         scale: Annotated[str, typer.Option(help="world scale: small | default | large")] = "default",
         seed: Annotated[int, typer.Option(help="run seed")] = 0) -> None:
    """Weak and strong initial policies of the synthetic world, each with the `auto` schedule and
    the fixed on->on path (the 'on-policy is always better' habit), two DPO iterations each."""
    def go():
        from stagealign.report import iteration_table

        summaries = []
        for policy in ("weak", "strong"):
            for name, sched in (("auto", ["schedule.kind=auto"]), ("on-on", ["schedule.kind=path", "schedule.path=on,on"])):
                cfg = load_config(None, [f"run_dir={out / f'{policy}-{name}'}", f"policy.testbed={policy}",
                                         f"world.scale={scale}", f"seed={seed}", *sched])
                summaries.append(_run(cfg))
        table = iteration_table(summaries)
        from stagealign.artifacts import write_text

        write_text(out / "demo.md", table + "\n")
        typer.echo(table)
    _guard(go)


@app.command("measure")
def measure_cmd(config: Annotated[Path, typer.Argument(help="YAML run config (policy, pool, judge, boundary)")],
                overrides: Overrides = None,
                checkpoint: Annotated[Optional[str], typer.Option(help="policy directory to measure (default: the "
                                                                  "config's initial policy)")] = None,
                as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Measure the boundary score of a policy: BS, its 95% interval, the stage decision and the cost."""
    def go():
        from stagealign.boundary import measure
        from stagealign.pipeline import stage_seed
        from stagealign.policy import load_policy
        from stagealign.providers import build_provider

        cfg = load_config(config, overrides or [])
        prov = build_provider(cfg, log=lambda m: typer.echo(m, err=True))
        pc = cfg.policy
        policy = load_policy(checkpoint or prov.initial_policy, tokenizer=None if checkpoint else pc.tokenizer,
                             dtype=pc.dtype, trust_remote_code=pc.trust_remote_code,
                             prompt_template=None if checkpoint else pc.prompt_template)
        res = measure(policy, prov.probe, prov.pool, prov.judge, cfg.boundary, cfg.generation,
                      seed=stage_seed(cfg.seed, 0, "measure"), train_prompts=len(prov.train))
        d = res.to_dict()
        d.pop("per_prompt")
        if as_json:
            typer.echo(json.dumps(d, indent=2))
        else:
            typer.echo(f"boundary score  {res.bs:.3f}  ({res.level:.0%} CI {res.lo:.3f} .. {res.hi:.3f}, "
                       f"{res.prompts} probe prompts, {res.comparisons} comparisons)")
            typer.echo(f"decision        {res.decision} (threshold {res.threshold})")
            typer.echo(f"cost            {res.generations} generations, {res.judge_calls} judge calls, "
                       f"{res.seconds:.1f}s, {res.cost_vs_epoch:.2%} of one training epoch's policy compute")
    _guard(go)


@world_app.command("show")
def world_show(config: Annotated[Optional[Path], typer.Argument(help="YAML run config (its `world` section)")] = None,
               overrides: Overrides = None) -> None:
    """Summarise a world: reward range, pool quality per writer, samples of the best answers."""
    def go():
        from stagealign.testbed.summary import describe

        cfg = load_config(config, overrides or [])
        typer.echo(describe(cfg.world))
    _guard(go)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
