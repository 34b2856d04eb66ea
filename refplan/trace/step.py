"""One trace: the recipe's trainer drives a precompute pass and two training steps on fake tensors, under
the segment tracker.

The step is TRL's and the Trainer's own code, called the way ``Trainer._run_epoch`` calls it:
``trainer.training_step(model, batch)`` (the trainer's ``compute_loss`` -- DPO/KTO ``_compute_loss``
with its reference forwards and logging metrics, ORPO/CPO ``get_batch_loss_metrics`` -- then
``accelerator.backward``), ``trainer._clip_grad_norm(model)``, ``optimizer.step()``,
``model.zero_grad()``, and for TR-DPO TRL's ``SyncRefModelCallback.sync_target_model``. A precompute
pass is the trainer's ``compute_ref_log_probs`` on one precompute batch. What this module adds is
bookkeeping: the batches, and the phase marks (names as in :mod:`refplan.planner`):

- ``precompute``: the pass before the optimizer exists;
- ``policy forward``: from the start of the step (KTO's no-grad KL forward included) until the first
  no-grad forward after the policy's grad forward, which starts
- ``reference forward`` (the reference forwards and the loss);
- ``backward``: from the moment ``compute_loss`` returns (its locals dead) to the end of backward;
- ``optimizer step``: gradient clipping, the optimizer step, ``zero_grad`` and a reference sync.

Two steps run and the second is measured, so the optimizer state exists during its forward and
backward. Two batches are live (the dataloader prefetches the next). Batches are built as TRL's
collators build them for exact-length data (int64 ids, masks, the completion in the second half; KTO
labels alternate desirable / undesirable as the bench's synthetic rows do), with one padded position
when the setup says the batch is padded.
"""

from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from refplan.methods import Method
from refplan.model import ModelSpec
from refplan.reference import ReferencePlan, reference_plan
from refplan.spec import TrainSpec
from refplan.trace.fake import decoder_config, fake_parameters, grouped_mm_any_dtype, known_padding, storages
from refplan.trace.tracker import SegmentTracker, hook_layers
from refplan.trace.trainer import adopt, base_of, build_models, prepare_training, recipe_trainer
from refplan.trace.values import KnownValues


def run(model: ModelSpec, train: TrainSpec, layers: int, attn: str, inventory: tuple[str, int] | None,
        real: bool) -> tuple[dict, dict, dict | None]:
    """(segment peaks, static components, inventory snapshot) of one trace at ``layers`` decoder layers."""
    plan = reference_plan(train)
    hf_config = decoder_config(model, layers)
    trainer, heads = recipe_trainer(train, plan, hf_config)
    policy, ref = build_models(hf_config, train, plan, attn)
    tracker = SegmentTracker(label_ops=inventory is not None)
    tracker.snapshot_when = inventory
    modes = (contextlib.nullcontext(), contextlib.nullcontext()) if real else (FakeTensorMode(), KnownValues())
    # the tracker is entered last: it sees every op first, and counts what the value shadows return
    with modes[0], modes[1], tracker, known_padding(train.padded), grouped_mm_any_dtype():
        memo: dict = {}
        for module in (policy, ref):
            if module is not None:
                fake_parameters(module, memo, real)
        static = _register_weights(tracker, policy, ref)
        adopt(trainer, policy, ref, heads)
        for module in (base_of(policy), ref):
            if module is not None:
                hook_layers(module, tracker, layers)
        driver = _Driver(trainer, tracker, train, plan)
        if plan.precompute_pass:
            driver.precompute(static)
        batches = [_batch(train, train.batch, plan.precompute_pass) for _ in range(2)]  # current + prefetched
        batch_tensors = _tensors(batches[0]) + _tensors(batches[1])
        static["batch"] = sum(storages(batch_tensors).values())
        tracker.register_labeled(batch_tensors, "batch")
        driver.prepare()
        for step in range(2):
            driver.step(batches[step % 2], measured=step == 1, static=static)
        tracker.set_phase(None, "done")
    return dict(tracker.segments), static, tracker.snapshot


class _Driver:
    """Calls the trainer's step methods and marks the phases on the tracker."""

    def __init__(self, trainer, tracker: SegmentTracker, train: TrainSpec, plan: ReferencePlan):
        self.trainer, self.tracker, self.train, self.plan = trainer, tracker, train, plan
        self.measured = False
        self._grad_forward_seen = self._in_reference = False
        for module in (trainer.model, trainer.ref_model):
            if module is not None:
                module.register_forward_pre_hook(self._on_forward, with_kwargs=True)
        compute_loss = trainer.compute_loss

        def compute_loss_then_backward(*args, **kwargs):
            loss = compute_loss(*args, **kwargs)
            self._phase("backward", backward=True)
            return loss

        trainer.compute_loss = compute_loss_then_backward

    def _phase(self, name: str, backward: bool = False) -> None:
        self.tracker.set_phase(name if self.measured else None, ("" if self.measured else "warm-up ") + name,
                               backward)

    def _on_forward(self, module, args, kwargs):
        if torch.is_grad_enabled():
            self._grad_forward_seen = True
        elif self._grad_forward_seen and not self._in_reference:
            self._in_reference = True
            self._phase("reference forward")

    def precompute(self, static: dict) -> None:
        """TRL ``_precompute_ref_logps`` for one batch: ``compute_ref_log_probs`` with the reference (the
        policy itself, adapters off under PEFT), before ``Trainer.train`` prepares anything."""
        t = self.trainer
        self.tracker.set_phase("precompute", "precompute")
        batch = _batch(self.train, self.train.precompute_batch or self.train.batch, ref_logps=False)
        static["precompute batch"] = sum(storages(_tensors(batch)).values())
        logps = t.compute_ref_log_probs(t.ref_model or t.model, batch)
        del logps, batch
        self.tracker.set_phase(None, "setup")

    def prepare(self) -> None:
        self.model = prepare_training(self.trainer)

    def step(self, batch: dict, measured: bool, static: dict) -> None:
        """One iteration of ``Trainer._run_epoch``'s inner loop (no gradient accumulation)."""
        from trl.trainer.callbacks import SyncRefModelCallback

        t, self.measured = self.trainer, measured
        if measured:
            opt = getattr(t.optimizer, "optimizer", t.optimizer)
            static["optimizer state"] = sum(storages(
                v for state in opt.state.values() for v in state.values() if torch.is_tensor(v)).values())
        self._grad_forward_seen = self._in_reference = False
        self._phase("policy forward")
        loss = t.training_step(self.model, batch)
        self._phase("optimizer step")
        t._clip_grad_norm(self.model)
        t.optimizer.step()
        self.model.zero_grad()
        if self.plan.trl_sync_ref_model:
            SyncRefModelCallback.sync_target_model(t.accelerator.unwrap_model(self.model), t.ref_model,
                                                   t.args.ref_model_mixup_alpha)
        del loss
        self.tracker.set_phase(None, "between steps")


def _register_weights(tracker: SegmentTracker, policy, ref) -> dict:
    """Register the weights as static components: policy, LoRA adapters, reference (copy or "ref" adapter)."""
    pol, lora, refw = [], [], []
    for name, p in policy.named_parameters():
        (refw if ".ref." in name else lora if "lora_" in name else pol).append(p)
    pol += list(policy.buffers())
    if ref is not None:
        refw += list(ref.parameters()) + list(ref.buffers())
    tracker.register_labeled(pol, "policy weights")
    tracker.register_labeled(lora, "lora weights")
    tracker.register_labeled(refw, "reference weights")
    pol_st, lora_st, ref_st = storages(pol), storages(lora), storages(refw)
    for k in list(ref_st):
        if k in pol_st:  # a storage shared with the policy (never, but count it once)
            del ref_st[k]
    return {"policy weights": sum(pol_st.values()), "lora weights": sum(lora_st.values()),
            "reference weights": sum(ref_st.values())}


def _batch(train: TrainSpec, rows: int, ref_logps: bool) -> dict:
    """The collated batch for exact-length data, as TRL's collators build it (``ref_logps``: with the
    precomputed reference log-prob columns)."""
    seq, half, method = train.seq, train.seq // 2, train.method

    def ids(n):
        return torch.zeros((n, seq), dtype=torch.long)

    def mask(n):
        t = torch.ones((n, seq), dtype=torch.long)
        if train.padded:
            t[0, 0] = 0
        return t

    def completion(n):
        t = torch.zeros((n, seq), dtype=torch.long)
        t[:, half:] = 1
        return t

    if method in (Method.DPO, Method.IPO):
        b = {"input_ids": ids(2 * rows), "attention_mask": mask(2 * rows), "completion_mask": completion(2 * rows)}
        if ref_logps:
            b.update(ref_chosen_logps=torch.zeros(rows), ref_rejected_logps=torch.zeros(rows))
        return b
    if method is Method.KTO:
        label = torch.zeros(rows, dtype=torch.bool)
        label[::2] = True
        b = {"input_ids": ids(rows), "attention_mask": mask(rows), "completion_mask": completion(rows),
             "KL_input_ids": ids(rows), "KL_attention_mask": mask(rows), "KL_completion_mask": completion(rows),
             "label": label}
        if ref_logps:
            b.update(ref_logps=torch.zeros(rows), ref_KL_logps=torch.zeros(rows))
        return b
    # ORPO / CPO collator (experimental DPODataCollatorWithPadding): chosen_*, rejected_*, prompt_*
    b = {}
    for side in ("chosen", "rejected"):
        b[f"{side}_input_ids"], b[f"{side}_attention_mask"] = ids(rows), mask(rows)
        labels = torch.zeros((rows, seq), dtype=torch.long)
        labels[:, :half] = -100
        b[f"{side}_labels"] = labels
    b["prompt_input_ids"] = torch.zeros((rows, half), dtype=torch.long)
    b["prompt_attention_mask"] = torch.ones((rows, half), dtype=torch.long)
    return b


def _tensors(batch: dict) -> list:
    return [v for v in batch.values() if torch.is_tensor(v)]
