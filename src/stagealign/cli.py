"""Command line: `stagealign run | demo | grid | report | measure | annotate | sft | world show`.

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


def _para(text: str) -> str:
    """Help text: dedent, join the lines of each paragraph (rich keeps hard line breaks), escape [."""
    import textwrap

    paras = textwrap.dedent(text).strip().split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paras).replace("[", "\\[")


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user caused, shown in one line (evaluated only once one was raised)."""
    from stagealign.artifacts import ArtifactError
    from stagealign.data.sources import LoaderError
    from stagealign.judges.base import JudgeError

    errors: list[type[BaseException]] = [ConfigError, ArtifactError, JudgeError, LoaderError, OSError, ValueError]
    # PolicyError is a ValueError. NumericsError can only come from a module already loaded, and
    # importing it (torch, transformers) would make every config typo wait 8 s for its message.
    if (training := sys.modules.get("stagealign.training.common")) is not None:
        errors.append(training.NumericsError)
    return tuple(errors)


def _guard(fn):
    _quiet()
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


def _quiet() -> None:
    """Silence library chatter without importing the libraries (`stagealign.quiet`)."""
    from stagealign.quiet import quiet_libraries

    quiet_libraries()


def _run(cfg: RunConfig) -> dict:
    """Run the loop; in a multi-process launch only the main process shows progress and logs."""
    from stagealign import distributed
    from stagealign.pipeline import Run
    from stagealign.ui import NullUI, RichUI

    return Run(cfg, ui=RichUI() if distributed.is_main() else NullUI()).execute()


@app.command()
def run(config: Annotated[Path, typer.Argument(help="YAML run config")], overrides: Overrides = None,
        resume: Annotated[bool, typer.Option("--resume", help="require an existing run directory to continue")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="validate the config (models, pool, judge, "
                                              "costs) without downloading or training anything")] = False,
        ) -> None:
    """Run (or resume) the stage-aware iteration loop described by CONFIG.

    Re-running the same command after an interruption continues where it stopped: finished
    stages are recorded in RUN_DIR and not redone. Several processes:
    `accelerate launch --config_file CONFIGS/accelerate/ddp.yaml -m stagealign.cli run CONFIG`
    (see the README's "Real models and data").
    """
    def go():
        cfg = load_config(config, overrides or [])
        if dry_run:
            from stagealign.dryrun import validate

            for line in validate(cfg):
                typer.echo(line)
            return
        from stagealign.rundir import RunDir

        if resume and not RunDir(cfg.run_dir).started:
            raise ConfigError(f"{cfg.run_dir}: nothing to resume (no stage recorded yet)")
        summary = _run(cfg)
        from stagealign import distributed
        from stagealign.report import iteration_table

        if distributed.is_main():
            typer.echo(iteration_table([summary]))
    _guard(go)


_HELP_GRID = _para("""Run (or resume) a path grid: initial policies x methods x seeds x data paths / schedules.

    The `grid:` section takes policies: [weak, boundary, strong] (testbed) or models: [...] (HF),
    methods: [dpo, slic-hf], seeds: [0, 1, 2], iterations: 2, paths: all (every static/on-policy
    path; or a list like ['off,on', 'on,on'], or none) and schedules: [auto, blend] (also static,
    onpolicy, union, route, or a rule name: bs, bs-hard, bs-pool, coverage, race). Everything
    else in CONFIG is the base run config shared by all cells; overrides `grid.KEY=VALUE` change
    the grid, all others the base config.

    Every cell is a resumable run directory OUT/<policy>/<method>/seed<s>/<path-off-on|auto|blend>;
    shared prefixes (off->off and off->on share iteration 1) are trained once. Re-running the
    command continues where it stopped. Writes OUT/grid.json (metrics with 95% CIs over seeds)
    and, unless --no-report, OUT/report.md with its PNG plots.

    --executor ray runs every cell as a Ray task (grid.resources: {num_cpus: 1, num_gpus: 0} per
    cell) on the cluster at --address, or on a local Ray instance for this machine; a cell waits
    for the cells whose prefix it adopts, failed cells are retried, and OUT must be on storage
    every node sees. Exits with status 2, naming each failed cell and why, when any cell failed.
    """)


@app.command(help=_HELP_GRID)
def grid(config: Annotated[Path, typer.Argument(help="YAML config: a run config plus a top-level `grid:` section")],
         overrides: Overrides = None,
         out: Annotated[Optional[Path], typer.Option(help="grid directory (default: the config's run_dir)")] = None,
         report: Annotated[bool, typer.Option("--report/--no-report", help="write OUT/report.md and plots "
                                              "at the end")] = True,
         executor: Annotated[str, typer.Option(help="local (one cell after the other, here) or ray (cells "
                                               "as Ray tasks)")] = "local",
         address: Annotated[Optional[str], typer.Option(help="Ray cluster to use with --executor ray (e.g. "
                                                        "auto or HOST:6379); default: a local Ray instance")] = None,
         ) -> None:
    def go():
        from stagealign.grid import load_grid_config, run_grid
        from stagealign.grid.execute import GridCellsFailed
        from stagealign.report import report_tables, write_grid_report
        from stagealign.ui import RichUI

        base, spec = load_grid_config(config, overrides or [])
        target = out if out is not None else Path(base.run_dir)
        failed = None
        try:
            metrics = run_grid(base, spec, target, ui=RichUI(), executor=executor, address=address)
        except GridCellsFailed as exc:  # the other cells finished: show their numbers, then the failures
            failed, metrics = exc, exc.metrics
        if metrics is not None:
            typer.echo(report_tables(metrics))
            typer.echo(f"\nmetrics: {target / 'grid.json'}")
            if report:
                typer.echo(f"report:  {write_grid_report(target, metrics)}")
        if failed is not None:
            raise failed
    _guard(go)


_HELP_REPORT = _para("""Write DIR/report.md with Markdown tables and PNG plots.

    For a grid: reward per iteration along every path (CI bands over seeds), static vs on-policy
    first-iteration gains and their ratio, best path / auto / blend, boundary-score trajectories,
    boundary-score calibration (BS vs on-policy minus static gain of the next iteration) and
    candidate diversity vs quality. For a single run: its iteration table and reward plot.
    """)


@app.command("report", help=_HELP_REPORT)
def report_cmd(directory: Annotated[Path, typer.Argument(help="a grid directory or a single run directory")]) -> None:
    def go():
        from stagealign.report import write_report

        typer.echo(str(write_report(directory)))
    _guard(go)


_HELP_DEMO = _para("""The research experiment on the synthetic world, end to end (what `make demo` runs).

    Runs the demo grid shipped with the package (stagealign/configs/demo-grid.yaml): weak,
    boundary and strong initial policies x DPO x seed 0, two iterations, all four static /
    on-policy paths plus the `auto` (boundary-score) and `blend` schedules; shared prefixes are
    trained once. Then prints the weak/strong `auto` vs `on->on` table (the "on-policy is always
    better" habit against the measured stage) and the effectiveness table, and writes
    OUT/report.md with the plots. Resumable like `grid`; extra arguments are overrides
    (e.g. grid.seeds=[0,1,2]). Equivalent to `stagealign grid <demo-grid.yaml> --out OUT`.
    """)


@app.command(help=_HELP_DEMO)
def demo(out: Annotated[Path, typer.Option(help="directory for the demo grid")] = Path("runs/demo"),
         scale: Annotated[Optional[str], typer.Option(help="world scale: small | default | large "
                                                      "(default: the demo grid's)")] = None,
         seed: Annotated[Optional[list[int]], typer.Option(help="run seed; repeat for several seeds")] = None,
         overrides: Overrides = None) -> None:
    def go():
        from stagealign.grid.demo import run_demo
        from stagealign.ui import RichUI

        text, report_path = run_demo(out, scale=scale, seeds=seed, overrides=overrides, ui=RichUI())
        typer.echo(text)
        typer.echo(f"\nreport: {report_path}")
    _guard(go)


_HELP_ANNOTATE = _para("""Pairwise annotations of a finished run's evaluation, in AlpacaEval's format.

    Judges ITERATION's evaluation answers again, with the run's judge, against the references given
    with the prompts (a `reference` column in the pool, or the answers of data.eval_pool's rows)
    or, without them, the initial policy's
    answers; writes annotations.json beside the iteration's evaluation (instruction, output_1 = reference, output_2 =
    policy, preference in [1, 2]) and prints the raw win rate. --lc adds AlpacaEval's
    length-controlled win rate (optional extra: pip install 'stagealign[alpaca-eval]'): its GLM
    knows each AlpacaEval instruction's difficulty, so the evaluation prompts are matched to
    AlpacaEval's instructions by text (fetched from the hub once) and any other prompt is refused;
    evaluate on AlpacaEval's prompts with data.eval_pool to get it.
    """)


@app.command("annotate", help=_HELP_ANNOTATE)
def annotate_cmd(run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
                 iteration: Annotated[int, typer.Option(help="which iteration's evaluation")] = 1,
                 against: Annotated[str, typer.Option(help="auto | given | initial")] = "auto",
                 lc: Annotated[bool, typer.Option("--lc", help="length-controlled win rate through alpaca_eval "
                                                  "(AlpacaEval's instructions only)")] = False,
                 ) -> None:
    def go():
        from stagealign.annotations import annotate

        typer.echo(json.dumps(annotate(run_dir, iteration, against, lc), indent=2))
    _guard(go)


@app.command("measure")
def measure_cmd(config: Annotated[Path, typer.Argument(help="YAML run config (policy, pool, judge, boundary)")],
                overrides: Overrides = None,
                checkpoint: Annotated[Optional[str], typer.Option(help="policy directory to measure (default: the "
                                                                  "config's initial policy)")] = None,
                as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Measure the boundary score of a policy: BS, its 95% interval, the stage decision and the cost."""
    def go():
        from stagealign.pipeline import measure_checkpoint

        res = measure_checkpoint(load_config(config, overrides or []), checkpoint,
                                 log=lambda m: typer.echo(m, err=True))
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


_HELP_SFT = _para("""Supervised fine-tuning: turn policy.model into the initial policy of a run.

    CONFIG is YAML with policy: (model, tokenizer, prompt_template, dtype, trust_remote_code, lora),
    data: (path: a .jsonl / .json / .parquet file, a folder, a save_to_disk folder or a hub name;
    split, max_rows, and the column names) and training: (learning_rate, epochs, batch_size,
    max_length, ...), plus output_dir, seed, report_to and chat_template. Rows hold a `messages`
    column (chat turns, rendered with the model's chat template) or `prompt` and `completion`
    columns. Trains with TRL's SFTTrainer and saves a safetensors policy directory (written
    atomically) with its prompt format; then start a run from it with policy.model: OUTPUT_DIR.
    """)


@app.command("sft", help=_HELP_SFT)
def sft_cmd(config: Annotated[Path, typer.Argument(help="YAML SFT config")],
            overrides: Annotated[Optional[list[str]], typer.Argument(help="overrides such as training.epochs=2",
                                                                     show_default=False)] = None) -> None:
    def go():
        from stagealign import distributed
        from stagealign.sft import load_sft_config, run_sft

        summary = run_sft(load_sft_config(config, overrides or []), log=lambda m: typer.echo(m, err=True))
        if distributed.is_main():
            typer.echo(f"saved {summary['output_dir']} ({summary['rows']} {summary['format']} rows, "
                       f"{summary['steps']} steps, final loss {summary['final_loss']:.4f})")
            typer.echo(f"next: put this in your run config (or pass it as an override to stagealign run):\n"
                       f"  {summary['next_step']}")
    _guard(go)


@world_app.command("show")
def world_show(config: Annotated[Optional[Path], typer.Argument(help="YAML run config (its `world` section)")] = None,
               overrides: Overrides = None,
               checkpoint: Annotated[Optional[Path], typer.Option(
                   "--checkpoint", help="a run directory: decompose its checkpoint's evaluation answers "
                   "(knowledge-token rate, utility per word, length, repeats, the reward's parts) instead; the "
                   "world is the run's own (its config.yaml)", metavar="RUN_DIR", show_default=False)] = None,
               iteration: Annotated[Optional[int], typer.Option(
                   help="with --checkpoint: which iteration's evaluation (0 = the initial policy; default: the "
                   "last finished one)", metavar="K", show_default=False)] = None) -> None:
    """Summarise a world: reward range, pool quality per writer, samples of the best answers; or,
    with --checkpoint RUN_DIR, what a run's checkpoint answers."""
    def go():
        from stagealign import plugins

        if checkpoint is None:
            if iteration is not None:
                raise ConfigError("--iteration needs --checkpoint RUN_DIR")
            typer.echo(plugins.provider("testbed").show(load_config(config, overrides or [])))
            return
        if config is not None or overrides:
            raise ConfigError("world show --checkpoint RUN_DIR reads the run's own config; give no CONFIG or overrides")
        from stagealign.grid.metrics import checkpoint_decomposition

        k, stats = checkpoint_decomposition(checkpoint, iteration)
        typer.echo(f"{checkpoint}: evaluation answers of iteration {k}"
                   + (" (the initial policy)" if k == 0 else f" (after {k} iteration{'s' * (k > 1)})"))
        width = max(len(key) for key in stats)
        for key, v in stats.items():
            text = "-" if v is None else (str(v) if isinstance(v, int) else f"{v:.4f}")
            typer.echo(f"  {key:{width}s}  {text:>10s}")
    _guard(go)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
