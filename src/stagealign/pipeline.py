"""The resumable stage-aware iteration loop.

    iteration 0:  evaluate the initial policy (its answers are the win-rate reference)
    iteration k:  measure (BS of policy_{k-1}) -> decide (schedule) -> build (candidates, judge,
                  pairs) -> train (TRL, reference = policy_{k-1} or the initial one) -> evaluate

Every stage writes its artifacts into the run directory (`rundir.RunDir`, which owns the layout
and the order of writes) and is then recorded; a re-run of the same config skips recorded stages
and reloads their results. Every stage draws its randomness from (seed, iteration, stage)
(`seeds.stage_seed`), so a resumed run produces exactly the numbers an uninterrupted one would.
The provider drops prompts too long for the initial policy's context and the run records the
counts in data.json; training truncates prompt + answer to the context when
`training.max_length` is not set.

Under a multi-process launcher (`accelerate launch`, `torchrun`) every process runs this same
loop: sampling and judging are split across the processes and gathered (`distributed`), each
stage's result is the main process's on every rank, training is TRL's DDP / DeepSpeed / FSDP, and
only the main process writes (RunDir's write methods), with a barrier after every stage so the
others read what it wrote.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import yaml

from stagealign import distributed
from stagealign.artifacts import fault
from stagealign.boundary import BoundaryResult, context_length, measure, votes_for_many
from stagealign.config import OnPolicyFile, RunConfig, dump_config
from stagealign.data.pairs import make_pairs, score_sets
from stagealign.data.pool import load_onpolicy_candidates
from stagealign.data.schema import CandidateSet, PreferencePair, Prompt
from stagealign.evaluate import evaluate
from stagealign.headline import headline, metric_label
from stagealign.exports import export_iteration
from stagealign.generation import check_backend, generate, vllm
from stagealign.judges.base import JudgeError
from stagealign.judges.llm_api import endpoint_stats
from stagealign.judges.store import JudgmentStore, StoredJudge
from stagealign.policy import Policy, load_configured_policy
from stagealign.providers import Provider, build_provider
from stagealign.race import race, race_prompts, sampling_passes
from stagealign.rundir import RunDir, stage_key
from stagealign.schedule import Choice, next_choice, races, settings_read
from stagealign.seeds import stage_seed
from stagealign.tracking import Tracker
from stagealign.training.preference import train_preference
from stagealign.ui import NullUI


class Run:
    """One run: `Run(cfg).execute()` runs or resumes it in `cfg.run_dir` and returns the summary."""

    def __init__(self, cfg: RunConfig, ui=None):
        self.cfg = cfg
        self.dir = RunDir(cfg.run_dir)
        self.ui = ui or NullUI()
        self._provider: Provider | None = None
        self._loaded: dict[str, Policy] = {}
        self._tracker = Tracker()

    # ---- set-up -----------------------------------------------------------------------
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
        p = build_provider(self.cfg, log=self.ui.log)
        self._provider = p  # policy(0) asks for the provider's initial policy
        try:
            record = p.fit_context(self.policy(0), self.cfg.generation.max_new_tokens)
        except BaseException:
            self._provider = None
            raise
        if ids := record["prompt_too_long_ids"]:
            self.ui.log(f"[data] skipped {record['skipped']['prompt_too_long']} prompts longer than "
                        f"{record['max_prompt_tokens']} tokens (context minus max_new_tokens), e.g. prompt id "
                        f"{ids[0]!r}; see {self.dir.data_path}")
        self.dir.write_data(record)
        store = JudgmentStore(self.dir.judgments_path, writer=distributed.is_main())
        p.judge = StoredJudge(distributed.sharded_judge(p.judge), store)  # nothing judged twice, even after a kill
        p.truth = distributed.sharded_judge(p.truth)

    def policy_path(self, k: int) -> str:
        return self.provider.initial_policy if k == 0 else str(self.dir.model(k))

    def policy(self, k: int) -> Policy:
        """Checkpoint k, cached; the initial one stays loaded while the KL needs it."""
        path = self.policy_path(k)
        if path not in self._loaded:
            keep = {self.policy_path(0)} if self.cfg.eval.kl else set()
            self._loaded = {p: v for p, v in self._loaded.items() if p in keep}
            self._loaded[path] = load_configured_policy(self.cfg.policy, path, initial=k == 0)
        return self._loaded[path]

    def _release(self, keep: Policy | None = None) -> None:
        """Drop cached checkpoints (all but `keep`) so that training holds at most two copies of
        the policy in memory; the evaluation after training loads what it needs again. A vLLM
        engine sleeps too (it holds most of the GPU; the next sampling call wakes it)."""
        vllm.suspend()
        self._loaded = {p: v for p, v in self._loaded.items() if v is keep}
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---- the loop ---------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        check_backend(self.cfg.generation.backend)  # a missing extra or GPU fails now, not mid-run
        distributed.refuse_lora_under_zero3(self.cfg.policy.lora)  # before hours of sampling, not after
        with self.dir.session():
            return self._execute()

    def _execute(self) -> dict[str, Any]:
        self.dir.write_config(dump_config(self.cfg), normal=_config_data)
        distributed.barrier()
        self._tracker = Tracker.open(self.dir, self.cfg.report_to, self.cfg)
        with self._tracker:  # a crash marks a W&B run failed
            return self._loop()

    def _loop(self) -> dict[str, Any]:
        self._stage(0, "evaluate", self._evaluate)
        previous: Choice | None = None
        for k in range(1, self.cfg.iterations + 1):
            bs = self._stage(k, "measure", self._measure)
            dec = self._stage(k, "decide", lambda k: self._decide(k, bs, previous))
            choice = Choice(dec["source"], dec["onpolicy_share"], dec["reason"])
            kept = _kept_race(dec)
            skip = set(kept["prompt_ids"]) if kept else set()
            self._stage(k, "build", lambda k: self._build(k, choice, skip))
            self._stage(k, "train", lambda k: self._train(k, kept))
            if kept:
                self.dir.drop_race_copy(k)
            self._stage(k, "evaluate", self._evaluate)
            previous = choice
        summary = self.summary()
        self.dir.write_summary(summary)
        return summary

    def _stage(self, k: int, name: str, fn) -> Any:
        if self.dir.has(k, name):
            return self.dir.read_stage(k, name)
        fault(f"{stage_key(k, name)}:before")  # test-only kill point, see artifacts.fault
        t0 = time.perf_counter()
        try:
            result = fn(k)
        except JudgeError as exc:
            raise JudgeError(f"iteration {k}, stage {name}: {exc}") from exc
        result = {} if result is None else result
        result.setdefault("_seconds", time.perf_counter() - t0)
        result = distributed.from_main(result)  # every rank goes on with the main process's result
        self.dir.write_stage(k, name, result)
        distributed.barrier()
        self._tracker.log(name, k, result)
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
        self.ui.log(f"[{stage_key(k, 'measure')}] BS={res.bs:.3f} [{res.lo:.3f}, {res.hi:.3f}] -> {res.decision} "
                    f"({res.prompts} prompts, {res.comparisons} comparisons, {res.seconds:.1f}s)")
        return {"measured": True, **res.to_dict()}

    def _decide(self, k: int, bs: dict, previous: Choice | None) -> dict:
        sched = self.cfg.schedule
        raced = self._race(k) if races(sched.kind, sched.rule) else None
        choice = next_choice(sched, self.cfg.boundary.threshold, k, bs, previous, race=raced)
        self.ui.log(f"[{stage_key(k, 'decide')}] {choice.source} (on-policy share {choice.onpolicy_share:.2f}): "
                    f"{choice.reason}")
        return {**asdict(choice), **({"race": raced} if raced else {})}

    def _race(self, k: int) -> dict:
        """Rule race (`stagealign.race`): static and on-policy pairs for the same `schedule.race_share`
        of the iteration's prompts (the pool's, so both sources exist for each), a short copy of
        policy k-1 trained on each, the copies compared head to head, the winner kept
        (`RunDir.race_copy`, its pairs in race_pairs.jsonl). Recorded in the decide stage."""
        p, cfg, g = self.provider, self.cfg, self.cfg.generation
        t0 = time.perf_counter()
        seed = stage_seed(cfg.seed, k, "race")
        rng = np.random.default_rng(seed)
        iteration = p.train_prompts(k, cfg.iterations, cfg.data.iteration_prompts)
        prompts = [q for q in iteration if q.id in p.pool]
        n = race_prompts(len(prompts), cfg.schedule.race_share)
        chosen = [prompts[i] for i in sorted(rng.permutation(len(prompts))[:n])]
        policy = self.policy(k - 1)
        with self.ui.task(f"iter {k}: race sampling", total=len(chosen)) as adv:
            got = generate(policy, chosen, n=g.n, temperature=g.temperature, top_p=g.top_p,
                           max_new_tokens=g.max_new_tokens, batch_size=g.batch_size, seed=seed, progress=adv,
                           backend=g.backend)
        gen_passes = sampling_passes(policy, chosen, got)
        sets = {"static": [self._static_set(q) for q in chosen],
                "onpolicy": [_sampled_set(k, q, a) for q, a in zip(chosen, got.texts)]}
        rows = {}
        for src, ss in sets.items():
            _drop_empty(ss)
            score_sets(ss, p.judge)
            rows[src] = [x.to_row() for x in make_pairs(ss, rule=cfg.pairing.rule, min_margin=cfg.pairing.min_margin,
                                                         iteration=k, rng=rng)[0]]
        ref = self.policy(0) if cfg.training.reference == "initial" and k > 1 else None
        self._release(keep=ref)
        load = lambda: load_configured_policy(cfg.policy, self.policy_path(k - 1), initial=k == 1)  # noqa: E731
        keep = lambda copy: self.dir.save_race_copy(k, copy, distributed.full_state_dict(copy.model))  # noqa: E731
        res = race(load, rows, p.probe, p.judge, self._training_config(policy), cfg.boundary, g, seed=seed,
                   work_dir=self.dir.work(k) / "race", keep=keep, scale=len(iteration) / max(n, 1),
                   budget=cfg.schedule.race_budget, ref_policy=ref, lora=cfg.policy.lora,
                   prompt_ids=[q.id for q in chosen], sample_seconds=time.perf_counter() - t0, sample_passes=gen_passes)
        self._release()
        if res.winner:
            self.dir.write_rows(k, "race_pairs.jsonl", rows[res.winner])
        self.ui.log(f"[{stage_key(k, 'decide')}] {res.evidence}; {sum(res.pairs.values())} race pairs, "
                    f"{res.seconds:.1f}s")
        return res.to_dict()

    def _training_config(self, policy: Policy):
        """`training` with max_length set to the policy's context when it is not set: a pool answer
        may not fit the context either."""
        tcfg = self.cfg.training
        if tcfg.max_length is None and (ctx := context_length(policy)) is not None:
            tcfg = tcfg.model_copy(update={"max_length": ctx})
        return tcfg

    def _build(self, k: int, choice: Choice, skip: set[str]) -> dict:
        """Iteration k's candidate sets for the chosen source, judged, then paired (`make_pairs`);
        prompts in `skip` (the kept race copy trained on them already) are left out."""
        p, cfg = self.provider, self.cfg
        rng = np.random.default_rng(stage_seed(cfg.seed, k, "build"))
        prompts = [q for q in p.train_prompts(k, cfg.iterations, cfg.data.iteration_prompts) if q.id not in skip]
        extra: dict[str, Any] = {}
        if choice.source == "union":
            sets = self._union_sets(k, prompts)
        elif choice.source == "route":
            sets, extra["routed"] = self._routed_sets(k, prompts)
        else:
            sets = self._split_sets(k, prompts, choice.onpolicy_share, rng)
        empty = _drop_empty(sets)
        vllm.suspend()  # the judge may need the GPU the engine holds
        with self.ui.task(f"iter {k}: judging", total=1) as adv:
            score_sets(sets, p.judge)
            adv(1)
        pairs, dropped = make_pairs(sets, rule=cfg.pairing.rule, min_margin=cfg.pairing.min_margin,
                                    iteration=k, rng=rng)
        dropped.update(empty)
        self.dir.write_rows(k, "candidates.jsonl", (s.to_row() for s in sets))
        self.dir.write_rows(k, "pairs.jsonl", (x.to_row() for x in pairs))
        self.dir.drop_partial(k, "samples")
        by_origin = Counter(x.origin for x in pairs)
        routed = f", routed {extra['routed']}" if "routed" in extra else ""
        self.ui.log(f"[{stage_key(k, 'build')}] {len(pairs)} pairs ({dict(by_origin)}), dropped {dict(dropped)}"
                    + routed)
        return {"pairs": len(pairs), "by_origin": dict(by_origin), "dropped": dict(dropped),
                "mean_margin": float(np.mean([x.margin for x in pairs])) if pairs else 0.0, **extra}

    def _static_set(self, q: Prompt) -> CandidateSet:
        """A copy of prompt q's static candidates (the pool's own stays untouched)."""
        return CandidateSet.from_row(self.provider.pool[q.id].to_row())

    def _split_sets(self, k: int, prompts: list[Prompt], share: float, rng: np.random.Generator) -> list[CandidateSet]:
        """static / onpolicy / blend: a random `share` of the prompts gets on-policy candidates, the
        others their static ones (only prompts the pool covers, unless every prompt is on-policy)."""
        train = [q for q in prompts if q.id in self.provider.pool] if share < 1 else prompts
        n_on = int(round(share * len(train)))
        order = rng.permutation(len(train))
        on_prompts = [train[i] for i in sorted(order[:n_on])]
        off_prompts = [train[i] for i in sorted(order[n_on:])]
        return [self._static_set(q) for q in off_prompts] + list(self._onpolicy_sets(k, on_prompts).values())

    def _onpolicy_sets(self, k: int, prompts: list[Prompt]) -> dict[str, CandidateSet]:
        """Prompt id -> iteration k's on-policy candidates: from `data.onpolicy_candidates` where the
        file covers the prompt, sampled from policy k-1 otherwise (resumable, `_sample_candidates`)."""
        sets = self._given_candidates(k, prompts)
        rest = [q for q in prompts if q.id not in sets]
        if rest:
            answers = self._sample_candidates(k, rest)
            sets.update({q.id: _sampled_set(k, q, a) for q, a in zip(rest, answers)})
        return sets

    def _union_sets(self, k: int, prompts: list[Prompt]) -> list[CandidateSet]:
        """union: one set per prompt holding its static candidates, then the policy's samples, judged
        together (scores the pool or a candidates file brought are dropped: they are not on the
        judge's scale); a prompt the pool lacks keeps its samples alone (origin onpolicy)."""
        on = self._onpolicy_sets(k, prompts)
        sets = []
        for q in prompts:
            if q.id not in self.provider.pool:
                sets.append(on[q.id])
                continue
            off = self._static_set(q)
            sets.append(CandidateSet(prompt_id=q.id, prompt=q.text, candidates=off.candidates + on[q.id].candidates,
                                     sources=off.sources + on[q.id].sources, origin="union", iteration=k))
        return sets

    def _routed_sets(self, k: int, prompts: list[Prompt]) -> tuple[list[CandidateSet], dict[str, int]]:
        """route: per prompt, the on-policy set when the policy's samples beat its static candidates
        (mean vote >= 1/2, the boundary probe's votes), the static set otherwise; a prompt the pool
        lacks is on-policy, one the policy has no answer for static. Returns the sets and how many
        prompts went each way."""
        pool, on = self.provider.pool, self._onpolicy_sets(k, prompts)
        both = [q for q in prompts if q.id in pool]
        vllm.suspend()  # the judge may need the GPU the engine holds
        votes = votes_for_many(self.provider.judge, [q.text for q in both], [on[q.id].candidates for q in both],
                               [pool[q.id].candidates for q in both], self.cfg.boundary.votes == "hard")
        static = {q.id for q, v in zip(both, votes) if (float(v.mean()) < 0.5 if v.size else not on[q.id].candidates)}
        sets = [self._static_set(q) if q.id in static else on[q.id] for q in prompts]
        return sets, {"onpolicy": len(prompts) - len(static), "static": len(static)}

    def _given_candidates(self, k: int, prompts: list) -> dict[str, CandidateSet]:
        """Iteration k's on-policy candidates from `data.onpolicy_candidates`, for the prompts the
        file covers (the others are sampled); counts of rows left out go to the log."""
        spec = self.cfg.data.onpolicy_candidates.get(k)
        if spec is None or not prompts:
            return {}
        spec = OnPolicyFile(path=spec) if isinstance(spec, str) else spec
        got = load_onpolicy_candidates(spec.path, k, format=spec.format, split=spec.split, fields=spec.fields,
                                       prompts=prompts, render=self.policy(k - 1).format,
                                       keep_scores=spec.scores == "keep")
        self.ui.log(f"[{stage_key(k, 'build')}] {len(got.sets)} of {len(prompts)} on-policy prompts from "
                    f"{spec.path}" + (f", skipped {dict(got.skipped)}" if got.skipped else ""))
        return dict(got.sets)

    def _sample_candidates(self, k: int, prompts: list) -> list[list[str]]:
        """On-policy answers for `prompts`, batch by batch into the stage's chunk log: a run killed
        while sampling resumes after its last finished batch, with the same samples."""
        g = self.cfg.generation
        index = {q.id: i for i, q in enumerate(prompts)}
        done = {index[r["prompt_id"]]: (r["answers"], r["token_ids"]) for r in self.dir.read_partial(k, "samples")
                if r["prompt_id"] in index}

        def save(idx: list[int], texts: list[list[str]], ids: list[list[list[int]]]) -> None:
            self.dir.append_partial(k, "samples", [{"prompt_id": prompts[i].id, "answers": t, "token_ids": x}
                                                   for i, t, x in zip(idx, texts, ids)])

        with self.ui.task(f"iter {k}: on-policy sampling", total=len(prompts)) as adv:
            return generate(self.policy(k - 1), prompts, n=g.n, temperature=g.temperature, top_p=g.top_p,
                            max_new_tokens=g.max_new_tokens, batch_size=g.batch_size,
                            seed=stage_seed(self.cfg.seed, k, "build"), progress=adv, backend=g.backend,
                            done=done, on_batch=save).texts

    def _train(self, k: int, kept: dict | None) -> dict:
        """Train policy k-1 on the iteration's pairs; or, when a race kept its winner copy (`kept`,
        the race's record), continue that copy, anchored at policy k-1 all the same."""
        cfg = self.cfg
        rows = list(self.dir.read_rows(k, "pairs.jsonl"))
        start = self.policy_path(k - 1)
        if kept:
            start = str(copy := self.dir.race_copy(k))
            if not copy.is_dir():
                raise FileNotFoundError(f"iteration {k}: the race's winner copy {start} is missing; to race again, "
                                        f"delete {self.dir.stage_path(k, 'decide')} and resume")
        ref = self.policy(0) if cfg.training.reference == "initial" and k > 1 else None
        if kept and ref is None:
            ref = self.policy(k - 1)  # the copy has moved: TRL's "reference = the model it starts from" no longer holds
        self._release(keep=ref)  # while training: the trained copy, and TRL's reference at most
        policy = load_configured_policy(cfg.policy, start, initial=k == 1 and not kept)
        if kept and not rows:  # the race took every prompt (fewer than RACE_MIN_PROMPTS): its copy is the iteration
            self.dir.save_model(k, policy, state_dict=distributed.full_state_dict(policy.model))
            self.ui.log(f"[{stage_key(k, 'train')}] the race's {kept['winner']} copy trained on every prompt: "
                        "kept as is")
            return {"steps": 0, "pairs": 0, "seconds": 0.0, "final_loss": None, "resumed_from_step": None,
                    "dropped_prompt_too_long": 0, "pairs_per_second": None, "epochs": cfg.training.epochs,
                    "log_history": [], "continued_race_copy": kept["winner"]}
        tcfg = self._training_config(policy)
        conversations = {q.id: q.messages for q in self.provider.train if q.messages}
        pairs = [{**PreferencePair.from_row(r).to_row(), **({"messages": conversations[r["prompt_id"]]}
                                                           if r.get("prompt_id") in conversations else {})}
                 for r in rows]  # a conversation prompt trains with its system prompt and earlier turns
        with self.ui.task(f"iter {k}: {cfg.training.method} training", total=None) as adv:
            res = train_preference(policy, pairs, tcfg,
                                   seed=stage_seed(cfg.seed, k, "train"), work_dir=self.dir.work(k), ref_policy=ref,
                                   report_to=cfg.report_to, where=f"iteration {k}", progress=adv,
                                   lora=cfg.policy.lora)
        weights = distributed.full_state_dict(policy.model)  # ZeRO-3 / FSDP shards gathered; None otherwise
        self.dir.save_model(k, policy, state_dict=weights)
        self.ui.log(f"[{stage_key(k, 'train')}] {res.steps} steps on {res.pairs} pairs, loss {res.final_loss:.4f}, "
                    f"{res.seconds:.1f}s")
        return {"steps": res.steps, "pairs": res.pairs, "seconds": res.seconds, "final_loss": res.final_loss,
                "resumed_from_step": res.metrics["resumed_from_step"],
                "dropped_prompt_too_long": res.metrics["dropped_prompt_too_long"],
                "pairs_per_second": res.pairs * cfg.training.epochs / max(res.seconds, 1e-9),
                "epochs": cfg.training.epochs, "log_history": res.metrics["log_history"],
                "continued_race_copy": kept["winner"] if kept else None}

    def _evaluate(self, k: int) -> dict:
        p = self.provider
        reference = None
        if k > 0:
            reference = {r["prompt_id"]: r["answers"] for r in self.dir.read_rows(0, "eval_answers.jsonl")}
        metrics, answers = evaluate(self.policy(k), p.eval, p.judge, self.cfg.eval, self.cfg.generation,
                                    seed=stage_seed(self.cfg.seed, 0, "evaluate"), truth=p.truth,
                                    reference=reference, initial=self.policy(0) if k > 0 else None)
        self.dir.write_rows(k, "eval_answers.jsonl", ({"prompt_id": pid, "answers": a} for pid, a in answers.items()))
        if self.cfg.data.eval_pool:  # the benchmark's own files: AlpacaEval's model outputs, Arena-Hard's answers
            export_iteration(self.dir, k, p.eval, answers)
        key, r = headline(metrics)
        self.ui.log(f"[{stage_key(k, 'evaluate')}] mean {metric_label(key)} {r['mean']:.3f} "
                    f"[{r['lo']:.3f}, {r['hi']:.3f}]")
        return metrics

    # ---- summary ----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        d = self.dir
        initial = d.read_stage(0, "evaluate")
        key, _ = headline(initial)  # one metric for the whole run, chosen by what the judge gives
        rows, before = [], initial
        for k in range(1, self.cfg.iterations + 1):
            bs, dec, build, train, after = (d.read_stage(k, s) for s in ("measure", "decide", "build", "train",
                                                                          "evaluate"))
            rows.append({
                "iteration": k, "source": dec["source"], "onpolicy_share": dec["onpolicy_share"],
                "bs": bs.get("bs"), "bs_lo": bs.get("lo"), "bs_hi": bs.get("hi"), "decision": bs.get("decision"),
                "bs_seconds": bs.get("seconds"), "bs_cost_vs_epoch": (bs.get("seconds", 0.0) / (
                    train["seconds"] / train["epochs"])) if bs.get("measured") and train["seconds"] else None,
                "pairs": build["pairs"] + (kept["pairs"][kept["winner"]] if (kept := _kept_race(dec)) else 0),
                "metric": key,
                "before": before[key]["mean"], "after": after[key]["mean"],
                "after_lo": after[key]["lo"], "after_hi": after[key]["hi"],
                "win_rate_truth": after.get("win_rate_truth", {}).get("mean"),
                "win_rate_judge": after.get("win_rate_judge", {}).get("mean"),
                "win_rate_given_judge": after.get("win_rate_given_judge", {}).get("mean"),
                "kl": after.get("kl_to_initial", {}).get("mean"),
            })
            before = after
        sched = self.cfg.schedule
        return {"run_dir": str(d.root), "schedule": sched.kind, "rule": sched.rule if sched.kind == "auto" else None,
                "method": self.cfg.training.method,
                "policy": self.cfg.policy.testbed or self.cfg.policy.model, "seed": self.cfg.seed,
                "metric": key, "initial": initial, "iterations": rows, **self._judge_stats()}

    def _judge_stats(self) -> dict[str, Any]:
        """An endpoint judge's request counts, unparseable replies included (never silent ties)."""
        stats = endpoint_stats(self._provider.judge) if self._provider is not None else None
        return {"judge_endpoint": stats} if stats else {}


def _kept_race(decide: dict) -> dict | None:
    """The decide stage's race record when the iteration continues from the race's winner copy
    (the chosen source is the winner's), else None."""
    raced = decide.get("race")
    return raced if raced and raced.get("kept") and raced.get("winner") == decide["source"] else None


def _sampled_set(k: int, q: Prompt, answers: list[str]) -> CandidateSet:
    """Iteration k's candidates for prompt q sampled from policy k-1."""
    return CandidateSet(prompt_id=q.id, prompt=q.text, candidates=answers, sources=[f"policy@{k - 1}"] * len(answers),
                        origin="onpolicy", iteration=k)


def _drop_empty(sets: list[CandidateSet]) -> Counter:
    """Drop empty answers from the sets in place (they carry no preference) and count them."""
    empty = Counter()
    for s in sets:
        keep = [i for i, c in enumerate(s.candidates) if c.strip()]
        if len(keep) < len(s.candidates):
            empty["empty_answer"] += len(s.candidates) - len(keep)
            s.candidates = [s.candidates[i] for i in keep]
            s.sources = [s.sources[i] for i in keep]
            s.scores = None if s.scores is None else [s.scores[i] for i in keep]
    return empty


def measure_checkpoint(cfg: RunConfig, checkpoint: str | None = None, log=print) -> BoundaryResult:
    """`stagealign measure`: the boundary score of `checkpoint` (default: the config's initial
    policy) against the config's pool and judge, outside any run directory."""
    check_backend(cfg.generation.backend)
    prov = build_provider(cfg, log=log)
    policy = load_configured_policy(cfg.policy, checkpoint or prov.initial_policy, initial=checkpoint is None)
    return measure(policy, prov.probe, prov.pool, prov.judge, cfg.boundary, cfg.generation,
                   seed=stage_seed(cfg.seed, 0, "measure"), train_prompts=len(prov.train))


def _config_data(text: str) -> dict:
    """A recorded config as data, as a resumed run compares it: today's defaults filled in (fields
    added since are no change), without `run_dir` (a moved run directory resumes) and without the
    schedule fields its kind does not read (`schedule.settings_read`)."""
    d = RunConfig.model_validate(yaml.safe_load(text)).model_dump(mode="json")
    del d["run_dir"]
    sched = d["schedule"]
    d["schedule"] = {f: sched[f] for f in ("kind", *settings_read(sched["kind"], sched["rule"]))}
    return d
