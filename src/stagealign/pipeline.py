"""The resumable stage-aware iteration loop.

    iteration 0:  evaluate the initial policy (its answers are the win-rate reference)
    iteration k:  measure (BS of policy_{k-1}) -> decide (schedule) -> build (candidates, judge,
                  pairs) -> train (TRL, reference = policy_{k-1} or the initial one) -> evaluate

Every stage writes its artifact atomically into `run_dir/iter_k/` and is then recorded in
`state.json`; a re-run of the same config skips recorded stages and reloads their artifacts.
Every stage draws its randomness from (seed, iteration, stage), so a resumed run produces
exactly the numbers an uninterrupted one would. A run holds `artifacts.RunLock` on its directory
and first cleans what a killed predecessor left (`artifacts.recover`). Prompts too long for the
initial policy's context (prompt tokens + generation.max_new_tokens) are skipped and counted in
`run_dir/data.json` (with the loader's skip counts); a split left empty is an error naming a prompt.
Training truncates prompt + answer to the context when `training.max_length` is not set.

Under a multi-process launcher (`accelerate launch`, `torchrun`) every process runs this same
loop: sampling and judging are split across the processes and gathered (`distributed`), each
stage's result is the main process's on every rank, training is TRL's DDP / DeepSpeed / FSDP, and
only the main process holds the lock and writes the run directory, with a barrier after every
stage so the others read what it wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from stagealign import artifacts, distributed
from stagealign.boundary import BoundaryResult, context_length, fit_context, measure
from stagealign.config import ConfigError, RunConfig, dump_config
from stagealign.data.pairs import make_pairs, score_sets
from stagealign.data.schema import CandidateSet, PreferencePair
from stagealign.evaluate import evaluate
from stagealign.generation import check_backend, sample
from stagealign.judges.base import JudgeError
from stagealign.policy import Policy, load_policy
from stagealign.providers import Provider, build_provider
from stagealign.schedule import Choice, choose, parse_path
from stagealign.training.preference import train_preference
from stagealign.ui import NullUI

STAGES = ("measure", "decide", "build", "train", "evaluate")


def stage_seed(seed: int, iteration: int, stage: str) -> int:
    h = hashlib.sha256(f"{seed}:{iteration}:{stage}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


class Run:
    """One run directory: `Run(cfg).execute()` runs or resumes it and returns the summary."""

    def __init__(self, cfg: RunConfig, ui=None):
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        self.ui = ui or NullUI()
        self._provider: Provider | None = None
        self._loaded: dict[str, Policy] = {}
        self._tb = None

    # ---- state ------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    def done(self) -> list[str]:
        return artifacts.read_json(self.state_path)["done"] if self.state_path.is_file() else []

    def _mark(self, key: str) -> None:
        done = self.done()
        if key not in done:
            done.append(key)
        artifacts.write_json(self.state_path, {"done": done})

    def _check_config(self) -> None:
        text = dump_config(self.cfg)
        path = self.dir / "config.yaml"
        # until a stage is recorded, a corrected config (after a bad-input error) may replace the old one
        if path.is_file() and self.state_path.is_file():
            if path.read_text(encoding="utf-8") != text:
                raise ConfigError(
                    f"{self.dir}: this run directory holds a run with a different config (see {path}); "
                    "resume with the same config or choose another run_dir")
        elif distributed.is_main():
            artifacts.write_text(path, text)
        distributed.barrier()

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            # main process first: it fills the caches (downloads, the testbed's SFT) the others then read
            if distributed.is_main():
                self._build_provider()
            distributed.barrier()
            if self._provider is None:
                self._build_provider()
        return self._provider

    def _build_provider(self) -> None:
        self._provider = p = build_provider(self.cfg, log=self.ui.log)
        try:
            self._fit_context(p)
        except BaseException:
            self._provider = None
            raise
        p.judge, p.truth = distributed.sharded_judge(p.judge), distributed.sharded_judge(p.truth)

    def _fit_context(self, p: Provider) -> None:
        """Drop prompts the initial policy cannot read and still answer; record counts in data.json."""
        policy, new = self.policy(0), self.cfg.generation.max_new_tokens
        skipped, long_ids, limit = dict(p.skipped), [], None
        for split in ("train", "probe", "eval"):
            kept, too_long, limit = fit_context(policy, getattr(p, split), new)
            if too_long and not kept:
                pid, n = too_long[0]
                raise ValueError(f"all {len(too_long)} {split} prompts are too long for the policy's context of "
                                 f"{limit + new} tokens with generation.max_new_tokens={new} (prompt id {pid!r} "
                                 f"has {n} tokens)")
            setattr(p, split, kept)
            long_ids += [pid for pid, _ in too_long]
        if long_ids:
            skipped["prompt_too_long"] = len(long_ids)
            self.ui.log(f"[data] skipped {len(long_ids)} prompts longer than {limit} tokens (context minus "
                        f"max_new_tokens), e.g. prompt id {long_ids[0]!r}; see {self.dir / 'data.json'}")
        if distributed.is_main():
            artifacts.write_json(self.dir / "data.json", {
                "prompts": {s: len(getattr(p, s)) for s in ("train", "probe", "eval")}, "skipped": skipped,
                "max_prompt_tokens": limit, "prompt_too_long_ids": long_ids[:20]})

    def policy_dir(self, k: int) -> str:
        return self.provider.initial_policy if k == 0 else str(self.dir / f"iter_{k}" / "model")

    def policy(self, k: int) -> Policy:
        path = self.policy_dir(k)
        if path not in self._loaded:
            keep = {self.policy_dir(0)} if self.cfg.eval.kl else set()
            self._loaded = {p: v for p, v in self._loaded.items() if p in keep}
            pc = self.cfg.policy
            self._loaded[path] = load_policy(path, tokenizer=pc.tokenizer if k == 0 else None, dtype=pc.dtype,
                                             trust_remote_code=pc.trust_remote_code,
                                             prompt_template=pc.prompt_template if k == 0 else None)
        return self._loaded[path]

    def adopt_prefix(self, src: str | Path, upto: int) -> None:
        """Start this run from iterations 0..`upto` of another run directory.

        Valid when both runs share seed and everything but the schedule's later steps (the grid's
        off->off and off->on share iteration 1): stage seeds depend only on (seed, iteration,
        stage), so the adopted artifacts are exactly what this run would have computed. Copies,
        so either run can be deleted or resumed on its own.
        """
        if distributed.is_main():
            self._adopt(Path(src), upto)
        distributed.barrier()

    def _adopt(self, src: Path, upto: int) -> None:
        import shutil

        if self.state_path.is_file():
            return
        src_done = artifacts.read_json(src / "state.json")["done"]
        keep = [s for s in src_done if int(s.split("/")[0].split("_")[1]) <= upto]
        self.dir.mkdir(parents=True, exist_ok=True)
        for k in range(upto + 1):
            s, d = src / f"iter_{k}", self.dir / f"iter_{k}"
            if s.is_dir() and not d.exists():
                tmp = self.dir / f".iter_{k}.adopt.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(s, tmp, ignore=shutil.ignore_patterns("work"))
                tmp.rename(d)
        artifacts.write_json(self.state_path, {"done": keep})

    # ---- the loop ---------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        check_backend(self.cfg.generation.backend)  # a missing extra or GPU fails now, not mid-run
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise artifacts.ArtifactError(
                f"{self.dir}: cannot create the run directory ({exc.strerror or exc})") from exc
        main = distributed.is_main()
        with artifacts.RunLock(self.dir) if main else contextlib.nullcontext():
            if main:
                artifacts.recover(self.dir)
            distributed.barrier()
            return self._execute()

    def _execute(self) -> dict[str, Any]:
        self._check_config()
        if self.cfg.report_to == "tensorboard" and distributed.is_main():
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"))
        self._stage(0, "evaluate", self._evaluate)
        previous: Choice | None = None
        for k in range(1, self.cfg.iterations + 1):
            bs = self._stage(k, "measure", self._measure)
            dec = self._stage(k, "decide", lambda k: self._decide(k, bs, previous))
            choice = Choice(dec["source"], dec["onpolicy_share"], dec["reason"])
            self._stage(k, "build", lambda k: self._build(k, choice))
            self._stage(k, "train", self._train)
            self._stage(k, "evaluate", self._evaluate)
            previous = choice
        summary = self.summary()
        if distributed.is_main():
            artifacts.write_json(self.dir / "summary.json", summary)
        if self._tb is not None:
            self._tb.close()
        return summary

    def _stage(self, k: int, name: str, fn) -> Any:
        key = f"iter_{k}/{name}"
        path = self.dir / f"iter_{k}" / f"{name}.json"
        if key in self.done() and path.is_file():
            return artifacts.read_json(path)
        artifacts.fault(f"{key}:before")  # test-only kill points, see artifacts.fault
        t0 = time.perf_counter()
        try:
            result = fn(k)
        except JudgeError as exc:
            raise JudgeError(f"iteration {k}, stage {name}: {exc}") from exc
        result = {} if result is None else result
        result.setdefault("_seconds", time.perf_counter() - t0)
        result = distributed.from_main(result)  # every rank goes on with the main process's result
        if distributed.is_main():
            artifacts.write_json(path, result)
            artifacts.fault(f"{key}:after-artifact")
            self._mark(key)
        distributed.barrier()
        if self._tb is not None:
            for tag, value in _scalars(result):
                self._tb.add_scalar(f"{name}/{tag}", value, k)
        return result

    # ---- stages -----------------------------------------------------------------------
    def _measure(self, k: int) -> dict | None:
        if not self.cfg.boundary.enabled:
            return {"measured": False}
        p = self.provider
        with self.ui.task(f"iter {k}: boundary score", total=min(len(p.probe), self.cfg.boundary.probe_prompts)) as adv:
            res: BoundaryResult = measure(self.policy(k - 1), p.probe, p.pool, p.judge, self.cfg.boundary,
                                          self.cfg.generation, seed=stage_seed(self.cfg.seed, k, "measure"),
                                          train_prompts=len(p.train), progress=adv)
        out = {"measured": True, **res.to_dict()}
        self.ui.log(f"[iter_{k}/measure] BS={res.bs:.3f} [{res.lo:.3f}, {res.hi:.3f}] -> {res.decision} "
                    f"({res.prompts} prompts, {res.comparisons} comparisons, {res.seconds:.1f}s)")
        return out

    def _decide(self, k: int, bs: dict, previous: Choice | None) -> dict:
        s = self.cfg.schedule
        measured = bs.get("measured", False)
        choice = choose(s.kind, k, bs.get("decision") if measured else None, bs.get("bs") if measured else None,
                        previous, path=parse_path(s.path) if s.path else None,
                        threshold=self.cfg.boundary.threshold, first=s.first, blend_width=s.blend_width)
        self.ui.log(f"[iter_{k}/decide] {choice.source} (on-policy share {choice.onpolicy_share:.2f}): {choice.reason}")
        return asdict(choice)

    def _build(self, k: int, choice: Choice) -> dict:
        p, cfg = self.provider, self.cfg
        rng = np.random.default_rng(stage_seed(cfg.seed, k, "build"))
        train = [q for q in p.train if q.id in p.pool] if choice.onpolicy_share < 1 else list(p.train)
        n_on = int(round(choice.onpolicy_share * len(train)))
        order = rng.permutation(len(train))
        on_prompts = [train[i] for i in sorted(order[:n_on])]
        off_prompts = [train[i] for i in sorted(order[n_on:])]
        sets = [CandidateSet.from_row(p.pool[q.id].to_row()) for q in off_prompts]
        if on_prompts:
            g = cfg.generation
            with self.ui.task(f"iter {k}: on-policy sampling", total=len(on_prompts)) as adv:
                answers = sample(self.policy(k - 1), [q.text for q in on_prompts], n=g.n, temperature=g.temperature,
                                 top_p=g.top_p, max_new_tokens=g.max_new_tokens, batch_size=g.batch_size,
                                 seed=stage_seed(cfg.seed, k, "build"), progress=adv, backend=g.backend)
            sets += [CandidateSet(prompt_id=q.id, prompt=q.text, candidates=a, sources=[f"policy@{k - 1}"] * len(a),
                                  origin="onpolicy", iteration=k) for q, a in zip(on_prompts, answers)]
        empty = Counter()
        for s in sets:  # empty answers carry no preference: drop them and count
            keep = [i for i, c in enumerate(s.candidates) if c.strip()]
            if len(keep) < len(s.candidates):
                empty["empty_answer"] += len(s.candidates) - len(keep)
                s.candidates = [s.candidates[i] for i in keep]
                s.sources = [s.sources[i] for i in keep]
                s.scores = None if s.scores is None else [s.scores[i] for i in keep]
        with self.ui.task(f"iter {k}: judging", total=1) as adv:
            score_sets(sets, p.judge)
            adv(1)
        pairs, dropped = make_pairs(sets, rule=cfg.pairing.rule, min_margin=cfg.pairing.min_margin,
                                    iteration=k, rng=rng)
        dropped.update(empty)
        d = self.dir / f"iter_{k}"
        if distributed.is_main():
            artifacts.write_jsonl(d / "candidates.jsonl", (s.to_row() for s in sets))
            artifacts.write_jsonl(d / "pairs.jsonl", (x.to_row() for x in pairs))
        by_origin = Counter(x.origin for x in pairs)
        self.ui.log(f"[iter_{k}/build] {len(pairs)} pairs ({dict(by_origin)}), dropped {dict(dropped)}")
        return {"pairs": len(pairs), "by_origin": dict(by_origin), "dropped": dict(dropped),
                "mean_margin": float(np.mean([x.margin for x in pairs])) if pairs else 0.0}

    def _train(self, k: int) -> dict:
        cfg = self.cfg
        rows = artifacts.read_jsonl(self.dir / f"iter_{k}" / "pairs.jsonl")
        policy = load_policy(self.policy_dir(k - 1), tokenizer=cfg.policy.tokenizer if k == 1 else None,
                             dtype=cfg.policy.dtype, trust_remote_code=cfg.policy.trust_remote_code,
                             prompt_template=cfg.policy.prompt_template if k == 1 else None)
        ref = self.policy(0) if cfg.training.reference == "initial" and k > 1 else None
        work = self.dir / f"iter_{k}" / "work"
        tcfg = cfg.training
        if tcfg.max_length is None and (ctx := context_length(policy)) is not None:
            tcfg = tcfg.model_copy(update={"max_length": ctx})  # a pool answer may not fit the context either
        with self.ui.task(f"iter {k}: {cfg.training.method} training", total=None) as adv:
            res = train_preference(policy, [PreferencePair.from_row(r).to_row() for r in rows], tcfg,
                                   seed=stage_seed(cfg.seed, k, "train"), work_dir=work, ref_policy=ref,
                                   report_to=cfg.report_to, where=f"iteration {k}", progress=adv,
                                   lora=cfg.policy.lora)
        weights = distributed.full_state_dict(policy.model)  # ZeRO-3 / FSDP shards gathered; None otherwise
        if distributed.is_main():
            policy.save(self.dir / f"iter_{k}" / "model", state_dict=weights)
        self.ui.log(f"[iter_{k}/train] {res.steps} steps on {res.pairs} pairs, loss {res.final_loss:.4f}, "
                    f"{res.seconds:.1f}s")
        return {"steps": res.steps, "pairs": res.pairs, "seconds": res.seconds, "final_loss": res.final_loss,
                "pairs_per_second": res.pairs * cfg.training.epochs / max(res.seconds, 1e-9),
                "epochs": cfg.training.epochs, "log_history": res.metrics["log_history"]}

    def _evaluate(self, k: int) -> dict:
        p = self.provider
        ref_path = self.dir / "iter_0" / "eval_answers.jsonl"
        reference = None
        if k > 0:
            reference = {r["prompt_id"]: r["answers"] for r in artifacts.iter_jsonl(ref_path)}
        metrics, answers = evaluate(self.policy(k), p.eval, p.judge, self.cfg.eval, self.cfg.generation,
                                    seed=stage_seed(self.cfg.seed, 0, "evaluate"), truth=p.truth,
                                    reference=reference, initial=self.policy(0) if k > 0 else None)
        if distributed.is_main():
            artifacts.write_jsonl(self.dir / f"iter_{k}" / "eval_answers.jsonl",
                                  ({"prompt_id": pid, "answers": a} for pid, a in answers.items()))
        r = metrics.get("reward") or metrics.get("judge_score")
        self.ui.log(f"[iter_{k}/evaluate] mean {'reward' if 'reward' in metrics else 'judge score'} "
                    f"{r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]")
        return metrics

    # ---- summary ----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        rows = []
        before = artifacts.read_json(self.dir / "iter_0" / "evaluate.json")
        for k in range(1, self.cfg.iterations + 1):
            d = self.dir / f"iter_{k}"
            bs = artifacts.read_json(d / "measure.json")
            dec = artifacts.read_json(d / "decide.json")
            build = artifacts.read_json(d / "build.json")
            train = artifacts.read_json(d / "train.json")
            after = artifacts.read_json(d / "evaluate.json")
            key = "reward" if "reward" in after else "judge_score"
            rows.append({
                "iteration": k, "source": dec["source"], "onpolicy_share": dec["onpolicy_share"],
                "bs": bs.get("bs"), "bs_lo": bs.get("lo"), "bs_hi": bs.get("hi"), "decision": bs.get("decision"),
                "bs_seconds": bs.get("seconds"), "bs_cost_vs_epoch": (bs.get("seconds", 0.0) / (
                    train["seconds"] / train["epochs"])) if bs.get("measured") else None,
                "pairs": build["pairs"], "metric": key,
                "before": before[key]["mean"], "after": after[key]["mean"],
                "after_lo": after[key]["lo"], "after_hi": after[key]["hi"],
                "win_rate_truth": after.get("win_rate_truth", {}).get("mean"),
                "win_rate_judge": after.get("win_rate_judge", {}).get("mean"),
                "win_rate_given_judge": after.get("win_rate_given_judge", {}).get("mean"),
                "kl": after.get("kl_to_initial", {}).get("mean"),
            })
            before = after
        return {"run_dir": str(self.dir), "schedule": self.cfg.schedule.kind, "method": self.cfg.training.method,
                "policy": self.cfg.policy.testbed or self.cfg.policy.model, "seed": self.cfg.seed,
                "initial": artifacts.read_json(self.dir / "iter_0" / "evaluate.json"), "iterations": rows}


def _scalars(d: dict, prefix: str = "") -> list[tuple[str, float]]:
    out = []
    for key, v in d.items():
        if key.startswith("_") or key in ("per_prompt", "log_history"):
            continue
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out.append((prefix + key, float(v)))
        elif isinstance(v, dict):
            out.extend(_scalars(v, prefix + key + "/"))
    return out
