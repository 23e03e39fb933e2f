"""``InteractionMonitor``: watch interactions during training, log them, stop after denoising.

Use with any ``transformers.Trainer`` (TRL's ``SFTTrainer`` included)::

    monitor = InteractionMonitor(tokenizer, probes, stop_early=True)
    trainer = SFTTrainer(..., callbacks=[monitor])
    monitor.attach(trainer)          # to log through the trainer's trackers
    trainer.train()

At the scheduled steps the monitor extracts interactions on the probe pairs
with the in-memory model, logs ``interactions/*`` metrics (removed and emerged
counts, stage boundary), and with ``stop_early=True`` stops training
``patience`` checkpoints after the stage boundary is detected.

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
from .dynamics import interval_flows
from .stopping import StageRule, detect_boundary
from .errors import SftscopeError

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
        patience: int = 1,
        engine: str = "auto",
    ) -> None:
        if not probes:
            raise SftscopeError("InteractionMonitor needs at least one probe pair")
        self.tokenizer = tokenizer
        self.probes = list(probes)
        self.steps = None if steps is None else set(int(s) for s in steps)
        self.every = every
        self.n_players = n_players
        self.tau = tau
        self.rule = rule
        self.stop_early = stop_early
        self.patience = patience
        self.engine = engine
        self.players = None
        self.frames: list[pd.DataFrame] = []
        self.boundary: int | None = None
        self.history: list[int | None] = []
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
                self.frames.append(result.to_dataframe().assign(sample=f"probe-{index}", step=step))
        finally:
            model.train(was_training)

    def _decide(self, step: int) -> tuple[dict[str, float], bool]:
        effects = pd.concat(self.frames, ignore_index=True)
        metrics: dict[str, float] = {}
        stop = False
        if effects["step"].nunique() >= 2:
            flows = interval_flows(effects, tau=self.tau)
            last = flows.iloc[-1]
            metrics = {
                "interactions/emerged": float(last["emerged"]),
                "interactions/removed": float(last["removed"]),
                "interactions/emerged_total": float(flows["emerged"].sum()),
                "interactions/removed_total": float(flows["removed"].sum()),
            }
            boundary = detect_boundary(flows, self.rule)
            self.history.append(boundary)
            if boundary is not None:
                self.boundary = boundary
                metrics["interactions/stage_boundary"] = float(boundary)
                after = sorted(s for s in effects["step"].unique() if s > boundary)
                # Live, the boundary is computed on the removals so far: trust it once it has
                # stayed put for `patience` more checkpoints.
                recent = self.history[-(self.patience + 1):]
                stable = len(recent) == self.patience + 1 and all(b == boundary for b in recent)
                stop = self.stop_early and len(after) >= self.patience and (stable or self.patience == 0)
        return metrics, stop

    def _run(self, args, state, control, model) -> None:
        step = state.global_step
        if not self._due(step):
            return
        stop = False
        metrics: dict[str, float] = {}
        if state.is_world_process_zero:
            self._extract(model, step)
            metrics, stop = self._decide(step)
        metrics, stop = _from_rank_zero((metrics, stop))
        if metrics and self.trainer is not None:
            self.trainer.log(metrics)  # on every rank: the trainer's own logging may hold collectives
        elif metrics:
            log.info("step %d: %s", step, metrics)
        if stop:
            self.stopped_at = step
            log.warning("interaction monitor: denoising ended at step %s; stopping at step %d", self.boundary, step)
            control.should_training_stop = True
            control.should_save = True

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._run(args, state, control, model)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._run(args, state, control, model)
        return control


def _from_rank_zero(value):
    """Rank 0's value (metrics and stop decision), the same on every rank."""
    import torch.distributed as dist  # noqa: PLC0415

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
