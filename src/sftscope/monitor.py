"""``InteractionMonitor``: watch interactions during training, log them, and stop by a validated rule.

Use with any ``transformers.Trainer`` (TRL's ``SFTTrainer`` included)::

    monitor = InteractionMonitor(tokenizer, probes, stop_early=True)
    trainer = SFTTrainer(..., callbacks=[monitor])
    monitor.attach(trainer)          # to log through the trainer's trackers
    trainer.train()

At the scheduled steps the monitor extracts interactions on the probe pairs
with the in-memory model and logs ``interactions/*`` metrics (removed and
emerged counts, the stage boundary). It also records the trainer's eval loss
(``metric``, from ``on_evaluate``). With ``stop_early=True`` it stops training
when ``stop_rule`` decides (``stopping.py``), and ``keep_step`` names the
checkpoint that rule keeps (set at the end of training when it never
stopped). The default is the rule that won ``benchmarks/stopping.py``: today
``last``, which never stops training; pass ``stop_rule="eval_loss_patience_2"``
for eval-loss early stopping. Rules on eval loss need the trainer to evaluate
(an ``eval_dataset`` and an evaluation schedule).

Multi-process training: only rank 0 extracts; its metrics and stop decision
are broadcast to every rank (``torch.distributed``), so all ranks log the same
and stop at the same step.
"""

from __future__ import annotations

import logging
from typing import Sequence

import pandas as pd
from transformers import TrainerCallback

from .data import Pair
from .dynamics import interval_flows, probe_utility
from .errors import SftscopeError
from .stopping import DEFAULT_RULE, Signals, StageRule, detect_boundary, standard_rules

log = logging.getLogger(__name__)


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
    ) -> None:
        """``rule``: the stage boundary logged (and used by ``stop_rule='cumulative_live'``, with ``patience``).

        ``metric``: the evaluation metric the eval-loss rules read (``eval_loss``
        for one eval data set; ``eval_<name>_loss`` for a dict of them).
        """
        if not probes:
            raise SftscopeError("InteractionMonitor needs at least one probe pair")
        self.rules = standard_rules(fraction=rule.fraction, boundary_patience=patience)
        live = [name for name, r in self.rules.items() if r.live and r.kind != "eval accuracy"]  # no accuracy here
        if stop_rule not in live:
            raise SftscopeError(f"stop_rule {stop_rule!r} cannot decide during training (use one of: {', '.join(live)})")
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
        self.players = None
        self.frames: list[pd.DataFrame] = []
        self.eval_loss: dict[int, float] = {}
        self.seen_losses: set[str] = set()
        self.boundary: int | None = None
        self.history: list[int | None] = []
        self.keep_step: int | None = None
        self.stopped_at: int | None = None
        self.trainer = None

    def attach(self, trainer) -> InteractionMonitor:
        """Log through ``trainer.log`` (and so to its ``report_to`` trackers)."""
        self.trainer = trainer
        return self

    def _due(self, step: int) -> bool:
        if self.steps is not None:
            return step in self.steps
        return step == 0 or (step < self.every and step & (step - 1) == 0) or step % self.every == 0

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
            results = extract_many(model, self.tokenizer, requests, tau=self.tau, engine=self.engine)
            for index, result in enumerate(results):
                self.frames.append(result.to_dataframe().assign(sample=f"probe-{index}", split="test", step=step))
        finally:
            model.train(was_training)

    def _signals(self) -> Signals:
        effects = pd.concat(self.frames, ignore_index=True) if self.frames else None
        flows = interval_flows(effects, tau=self.tau) if effects is not None and effects["step"].nunique() >= 2 else None
        steps = sorted({*self.eval_loss, *(effects["step"].unique() if effects is not None else [])})
        return Signals(
            [int(s) for s in steps], pd.Series(self.eval_loss, dtype=float), flows,
            probe_utility(effects, tau=self.tau) if effects is not None else None,
            None if flows is None else flows.set_index("step")["emerged_rho"],
        )

    def _decide(self, step: int, extracted: bool) -> tuple[dict[str, float], bool]:
        signals = self._signals()
        metrics: dict[str, float] = {}
        if extracted and signals.flows is not None:
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
        needs_flows = self.rules[self.stop_rule].kind.startswith("interaction")
        if not signals.steps or (needs_flows and signals.flows is None):
            return metrics, False
        decision = self.rules[self.stop_rule].pick(signals)
        stop = self.stop_early and decision.fired and decision.decided_at == step
        if stop:
            self.keep_step = decision.step
            metrics["interactions/keep_step"] = float(decision.step)
        return metrics, stop

    def _final_keep(self, last_step: int) -> int:
        """What the rule keeps when training ran to the end (``last``: the final step)."""
        if self.stop_rule == "last":
            return last_step
        signals = self._signals()
        needs_flows = self.rules[self.stop_rule].kind.startswith("interaction")
        if not signals.steps or (needs_flows and signals.flows is None):
            return last_step
        return self.rules[self.stop_rule].pick(signals).step

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

    def _run(self, args, state, control, model) -> None:
        step = state.global_step
        if not self._due(step):
            return
        metrics: dict[str, float] = {}
        stop = False
        if state.is_world_process_zero:
            self._extract(model, step)
            metrics, stop = self._decide(step, extracted=True)
        self._act(state, control, metrics, stop)

    def _reads_eval_loss(self) -> bool:
        return "eval loss" in self.rules[self.stop_rule].kind

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.stop_early and self._reads_eval_loss() and self.trainer is not None and self.trainer.eval_dataset is None:
            raise SftscopeError(f"InteractionMonitor: stop_rule {self.stop_rule!r} reads {self.metric!r}, but the "
                                "trainer has no eval_dataset: pass one (and an evaluation schedule), "
                                "or stop_rule='cumulative_live'")
        self._run(args, state, control, model)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.keep_step is None:  # the rule never stopped training
            self.keep_step = self._final_keep(state.global_step)
        if self.stop_early and self._reads_eval_loss() and not self.eval_loss:
            seen = ", ".join(sorted(self.seen_losses)) or "none"
            log.warning("interaction monitor: no evaluation reported %r during training, so %s could not stop it "
                        "(losses reported: %s): pass metric= one of them, or set an evaluation schedule",
                        self.metric, self.stop_rule, seen)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._run(args, state, control, model)
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics:
            return control
        self.seen_losses.update(k for k in metrics if k.endswith("loss"))
        if self.metric not in metrics:  # one of several eval sets (each is reported on its own), or a wrong name
            return control
        self.eval_loss[state.global_step] = float(metrics[self.metric])
        found: dict[str, float] = {}
        stop = False
        if state.is_world_process_zero and state.global_step > 0:
            found, stop = self._decide(state.global_step, extracted=False)
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
