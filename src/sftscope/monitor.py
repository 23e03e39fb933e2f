"""``InteractionMonitor``: watch interactions and drift during training, log them, and stop by a validated rule.

Use with any ``transformers.Trainer`` (TRL's ``SFTTrainer`` included)::

    monitor = InteractionMonitor(tokenizer, probes, stop_early=True)
    trainer = SFTTrainer(..., callbacks=[monitor])
    monitor.attach(trainer)          # to log through the trainer's trackers
    trainer.train()

At the scheduled steps the monitor extracts interactions on the probe pairs
(held-out pairs: their utility is the probe-based rules' signal) with the
in-memory model and logs ``interactions/*`` metrics (removed and emerged
counts, the stage boundary). With a PEFT model it also logs ``drift/kl``,
``drift/format`` and ``drift/agreement`` on a few general prompts (the
adapter disabled is the base model). It records the trainer's eval loss
(``metric``, from ``on_evaluate``) and, given ``eval_pairs`` and ``labels``,
the validation accuracy. With ``stop_early=True`` it stops training when
``stop_rule`` decides: the rule's ``check`` runs on the signals seen so far,
exactly as the offline analysis replays it (``stopping.Rule.pick``), and at a
step with an evaluation the decision waits for it. ``keep_step`` names the
checkpoint the rule keeps (its ``final`` choice when it never stopped).

Multi-process training: only rank 0 extracts; its metrics and stop decision
are broadcast to every rank (``torch.distributed``), so all ranks log the same
and stop at the same step.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Sequence

import pandas as pd
from transformers import TrainerCallback

from .data import Pair
from .dynamics import interval_flows, probe_utility
from .errors import SftscopeError
from .stopping import DEFAULT_RULE, Signals, StageRule, detect_boundary, standard_rules

log = logging.getLogger(__name__)

PROBE_SPLIT = "validation"  # the monitor's probes are held-out pairs


class InteractionMonitor(TrainerCallback):
    def __init__(
        self,
        tokenizer,
        probes: Sequence[Pair],
        *,
        steps: Sequence[int] | None = None,
        every: int = 16,
        n_players: int = 6,
        tau: float = 0.05,
        rule: StageRule = StageRule(),
        stop_early: bool = False,
        stop_rule: str = DEFAULT_RULE,
        patience: int = 1,
        metric: str = "eval_loss",
        engine: str = "auto",
        eval_pairs: Sequence[Pair] | None = None,
        labels: Sequence[str] | None = None,
        drift_prompts: int | Sequence[str] = 16,
    ) -> None:
        """``rule``: the stage boundary logged (and used by ``stop_rule='cumulative_live'``, with ``patience``).

        ``metric``: the evaluation metric the eval-loss rules read (``eval_loss``
        for one eval data set; ``eval_<name>_loss`` for a dict of them).
        ``eval_pairs`` and ``labels``: score validation accuracy at every
        evaluation (the accuracy rules need it). ``drift_prompts``: how many of
        the shipped general prompts (or which prompts) drift is logged on; 0 turns it off.
        """
        if not probes:
            raise SftscopeError("InteractionMonitor needs at least one probe pair")
        self.rules = standard_rules(fraction=rule.fraction, boundary_patience=patience)
        scores_accuracy = bool(eval_pairs) and bool(labels)
        live = [name for name, r in self.rules.items()
                if r.live and ("eval_accuracy" not in r.needs or scores_accuracy)]
        if stop_rule not in live:
            why = " (give eval_pairs and labels to score validation accuracy)" if stop_rule in self.rules and \
                self.rules[stop_rule].live else ""
            raise SftscopeError(f"stop_rule {stop_rule!r} cannot decide during training{why} (use one of: "
                                f"{', '.join(live)})")
        self.tokenizer = tokenizer
        self.probes = list(probes)
        self.steps = None if steps is None else set(int(s) for s in steps)
        self.every = every
        self.n_players = n_players
        self.tau = tau
        self.rule = rule
        self.stop_early = stop_early
        self.stop_rule = stop_rule
        self.patience = patience
        self.metric = metric
        self.engine = engine
        self.eval_pairs = list(eval_pairs or [])
        self.labels = list(labels) if labels else None
        self.drift_prompts = drift_prompts
        self.players = None
        self.frames: list[pd.DataFrame] = []
        self.eval_loss: dict[int, float] = {}
        self.eval_accuracy: dict[int, float] = {}
        self.seen_losses: set[str] = set()
        self.boundary: int | None = None
        self.history: list[int | None] = []
        self.keep_step: int | None = None
        self.stopped_at: int | None = None
        self.trainer = None
        self._drift = None  # (scorer inputs) once the base answers are known; False when drift cannot be measured

    def attach(self, trainer) -> InteractionMonitor:
        """Log through ``trainer.log`` (and so to its ``report_to`` trackers)."""
        self.trainer = trainer
        return self

    def _due(self, step: int) -> bool:
        if self.steps is not None:
            return step in self.steps
        return step == 0 or (step < self.every and step & (step - 1) == 0) or step % self.every == 0

    # ------------------------------------------------------------------ measurements

    def _extract(self, model, step: int) -> None:
        from .extract import Request, extract_many, select_players  # noqa: PLC0415

        was_training = model.training
        model.eval()
        try:
            if self.players is None:  # frozen on the model before (or at the start of) training
                self.players = [
                    select_players(model, self.tokenizer, p.prompt, p.response, self.n_players, allow_fewer=True)
                    for p in self.probes
                ]
            requests = [
                Request(pair.prompt, pair.response, players, context=f"probe {index}, step {step}")
                for index, (pair, players) in enumerate(zip(self.probes, self.players))
            ]
            # coverage only: whole-prompt R² would cost 256 more passes per probe at every evaluation
            results = extract_many(model, self.tokenizer, requests, tau=self.tau, engine=self.engine,
                                   whole_prompt_masks=0)
            for index, result in enumerate(results):
                self.frames.append(result.to_dataframe().assign(sample=f"probe-{index}", split=PROBE_SPLIT, step=step))
        finally:
            model.train(was_training)

    def _drift_metrics(self, model) -> dict[str, float]:
        """KL from the base model and format drift on a few general prompts (a PEFT model: its adapter disabled)."""
        if self._drift is False or not self.drift_prompts:
            return {}
        from .drift import DriftScorer, GeneralSet, greedy_answers, load_general_set  # noqa: PLC0415

        if self._drift is None:
            if not hasattr(model, "disable_adapter"):
                log.warning("interaction monitor: the model has no adapter to disable (not a PEFT model), so drift "
                            "from the base model is not logged")
                self._drift = False
                return {}
            prompts = (list(load_general_set(limit=self.drift_prompts).prompts)  # spread over every kind
                       if isinstance(self.drift_prompts, int) else list(self.drift_prompts))
            with model.disable_adapter():
                answers = greedy_answers(model, self.tokenizer, prompts)
            self._drift = (GeneralSet(tuple(prompts), (), ()), answers)
        general, answers = self._drift
        scorer = DriftScorer(self.tokenizer, general, answers, self.labels)
        with model.disable_adapter():
            scorer.base(model)
        scores = scorer.state(model)
        tokens = sum(len(a) for a in answers)
        metrics = {"drift/kl": sum(scores.kl) / tokens, "drift/agreement": sum(scores.agrees) / len(answers)}
        if self.labels:
            metrics["drift/format"] = sum(scores.label_start) / len(answers)
        return metrics

    def _accuracy(self, model, step: int) -> None:
        if not (self.eval_pairs and self.labels):
            return
        from .quality import score_split  # noqa: PLC0415

        was_training = model.training
        model.eval()
        try:
            self.eval_accuracy[step] = float(score_split(model, self.tokenizer, self.eval_pairs, self.labels)["accuracy"])
        finally:
            model.train(was_training)

    # ------------------------------------------------------------------ decisions

    def _signals(self) -> Signals:
        effects = pd.concat(self.frames, ignore_index=True) if self.frames else None
        flows = interval_flows(effects, tau=self.tau) if effects is not None and effects["step"].nunique() >= 2 else None
        steps = sorted({*self.eval_loss, *self.eval_accuracy, *(effects["step"].unique() if effects is not None else [])})
        return Signals(
            [int(s) for s in steps], pd.Series(self.eval_loss, dtype=float), flows,
            probe_utility(effects, split=PROBE_SPLIT, tau=self.tau) if effects is not None else None,
            None if flows is None else flows.set_index("step")["emerged_rho"],
            pd.Series(self.eval_accuracy, dtype=float) if self.eval_accuracy else None,
        )

    def _interaction_metrics(self, signals: Signals) -> dict[str, float]:
        if signals.flows is None:
            return {}
        last = signals.flows.iloc[-1]
        metrics = {
            "interactions/emerged": float(last["emerged"]),
            "interactions/removed": float(last["removed"]),
            "interactions/emerged_total": float(signals.flows["emerged"].sum()),
            "interactions/removed_total": float(signals.flows["removed"].sum()),
        }
        boundary = detect_boundary(signals.flows, self.rule)
        self.history.append(boundary)
        if boundary is not None:
            self.boundary = boundary
            metrics["interactions/stage_boundary"] = float(boundary)
        return metrics

    def _decide(self, signals: Signals) -> tuple[dict[str, float], bool]:
        """Whether the rule stops now, on the signals seen so far (what ``Rule.pick`` replays offline)."""
        rule = self.rules[self.stop_rule]
        if not (self.stop_early and rule.check is not None and signals.steps):
            return {}, False
        decision = rule.check(signals)
        if decision is None:
            return {}, False
        self.keep_step = decision.step
        return {"interactions/keep_step": float(decision.step)}, True

    def _final_keep(self, last_step: int) -> int:
        """What the rule keeps when training ran to the end (its ``final`` choice)."""
        signals = self._signals()
        rule = self.rules[self.stop_rule]
        if not rule.applies(signals):
            return last_step
        return rule.final(replace(signals, steps=sorted({*signals.steps, last_step})))

    def _act(self, state, control, metrics: dict[str, float], stop: bool) -> None:
        metrics, stop = _from_rank_zero((metrics, stop))
        if metrics and self.trainer is not None:
            self.trainer.log(metrics)  # on every rank: the trainer's own logging may hold collectives
        elif metrics:
            log.info("step %d: %s", state.global_step, metrics)
        if stop and self.stopped_at is None:
            self.stopped_at = state.global_step
            log.warning("interaction monitor: %s decided at step %d; keep checkpoint %s",
                        self.stop_rule, state.global_step, self.keep_step)
            control.should_training_stop = True
            control.should_save = True

    def _reads_eval_loss(self) -> bool:
        return "eval_loss" in self.rules[self.stop_rule].needs

    # ------------------------------------------------------------------ trainer events

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.stop_early and self._reads_eval_loss() and self.trainer is not None and self.trainer.eval_dataset is None:
            raise SftscopeError(f"InteractionMonitor: stop_rule {self.stop_rule!r} reads {self.metric!r}, but the "
                                "trainer has no eval_dataset: pass one (and an evaluation schedule), "
                                "or stop_rule='cumulative_live'")
        self._measure(state, control, model, evaluation_follows=False)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # an evaluation at this step comes after this event: the decision waits for it (as the offline replay sees it)
        self._measure(state, control, model, evaluation_follows=bool(control.should_evaluate))
        return control

    def _measure(self, state, control, model, *, evaluation_follows: bool) -> None:
        step = state.global_step
        if not self._due(step):
            return
        metrics: dict[str, float] = {}
        stop = False
        if state.is_world_process_zero:
            self._extract(model, step)
            signals = self._signals()
            metrics = {**self._interaction_metrics(signals), **self._drift_metrics(model)}
            if not evaluation_follows:
                found, stop = self._decide(signals)
                metrics.update(found)
        self._act(state, control, metrics, stop)

    def on_train_end(self, args, state, control, **kwargs):
        if self.keep_step is None:  # the rule never stopped training
            self.keep_step = self._final_keep(state.global_step)
        if self.stop_early and self._reads_eval_loss() and not self.eval_loss:
            seen = ", ".join(sorted(self.seen_losses)) or "none"
            log.warning("interaction monitor: no evaluation reported %r during training, so %s could not stop it "
                        "(losses reported: %s): pass metric= one of them, or set an evaluation schedule",
                        self.metric, self.stop_rule, seen)
        return control

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not metrics:
            return control
        self.seen_losses.update(k for k in metrics if k.endswith("loss"))
        if self.metric not in metrics:  # one of several eval sets (each is reported on its own), or a wrong name
            return control
        step = state.global_step
        self.eval_loss[step] = float(metrics[self.metric])
        found: dict[str, float] = {}
        stop = False
        if state.is_world_process_zero and step > 0:
            if model is not None:
                self._accuracy(model, step)
                if step in self.eval_accuracy:
                    found["eval/validation_accuracy"] = self.eval_accuracy[step]
            decided, stop = self._decide(self._signals())
            found.update(decided)
        self._act(state, control, found, stop)
        return control


def _from_rank_zero(value):
    """Rank 0's value (metrics and stop decision), the same on every rank."""
    import torch.distributed as dist  # noqa: PLC0415

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
