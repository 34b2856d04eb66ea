"""The planner: per-phase, per-component peak memory of one preference-training step.

Pure arithmetic over a :class:`~refplan.model.ModelSpec` and a :class:`~refplan.spec.TrainSpec`;
imports the standard library only. The peak is the maximum over a timeline of phases, in the
order TRL 1.16 runs them, one function each:

  precompute        (precompute strategy only, during trainer construction: policy + reference
                     weights, no optimizer state yet; a no-grad forward per precompute batch)
  fsdp prepare      (FSDP2 only, at the start of train(): accelerate shards the policy while its
                     unsharded originals are still held)
  policy forward    (activations saved for backward accumulate; the log-prob path at the end)
  reference forward (DPO/KTO run it *after* the policy forward -- dpo_trainer.py _compute_loss --
                     so its transient sits on top of the saved policy activations)
  backward          (saved activations are freed layer by layer while gradients accumulate)
  optimizer step    (gradients + optimizer state + the update's temporaries)

Steady state (step >= 1): the optimizer state exists during the forward and backward, gradients
do not (the Trainer zeroes them with ``set_to_none``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

from refplan import activations as act
from refplan import forward_tensors as fwd
from refplan import fsdp_terms, logprob, sharding_terms, terms
from refplan import quant as quant_terms
from refplan.errors import PlanError
from refplan.methods import Method, Strategy, applicable_strategies
from refplan.model import ModelSpec
from refplan.reference import ReferencePlan, loads_reference_to_precompute, reference_plan
from refplan.result import Estimate, Phase
from refplan.settings import Device, Quant, Sharding, StateRule, TransientRule, check_lora_targets
from refplan.spec import TrainSpec
from refplan.units import dtype_bytes

PHASES = ("precompute", "fsdp prepare", "policy forward", "reference forward", "backward", "optimizer step")


from refplan.backward_walk import _backward, _backward_moments, _div, _layer_param_bytes, train_zero2  # noqa: E402,F401


def _largest_param_tensor(model: ModelSpec, train: TrainSpec) -> int:
    """Elements of the largest trainable tensor (AdamW's single-tensor temporaries scale with it)."""
    if train.finetune.peft:
        lins = model.lora_linears(train.lora_targets)
        return max((l.count * l.lora_rank_mult * train.lora_r * max(l.in_features, l.out_features) for l in lins),
                   default=0)
    cands = [model.vocab_size * model.token_dim]
    cands += [l.in_features * l.out_features * (l.count if not l.lora_target else 1) for l in model.all_linears]
    return max(cands)


def optimizer_transient_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """Temporaries of one optimizer step, by the optimizer's :class:`~refplan.settings.TransientRule`.

    ``adamw`` is the HF Trainer's default ``adamw_torch_fused`` (training_args.py, torch >= 2.8):
    ``torch._fused_adamw_`` updates in place, no temporaries, on CPU and CUDA. ``adamw-8bit`` and
    ``paged-adamw`` (bitsandbytes) update blockwise in place on CUDA (fused kernels, from the code) and
    through fp32 temporaries on CPU (:func:`_bnb_cpu_step_transient_bytes`). Adafactor builds the update for one
    tensor at a time (about 2 x the largest tensor). SGD without momentum: none.

    ``adamw-torch`` (``optim="adamw_torch"``): off CUDA the single-tensor path builds
    ``exp_avg_sq.sqrt()`` and its quotient one tensor at a time (2 x the largest tensor); on CUDA
    the foreach path builds ``_foreach_sqrt`` of every state at once (1 x the trainable bytes,
    adam.py ``_multi_tensor_adamw``).
    """
    pbytes = dtype_bytes(terms.trainable_dtype(train))
    rule = train.optim.caps.transient
    if rule is TransientRule.BNB_ON_CPU:
        return 0 if train.device is Device.CUDA else _bnb_cpu_step_transient_bytes(model, train)
    if rule is TransientRule.FOREACH_ON_CUDA and train.device is Device.CUDA:
        return _div(terms.trainable_params(model, train), train.shards_of("optimizer")) * pbytes
    if rule is TransientRule.IN_PLACE:
        return 0
    return 2 * _largest_param_tensor(model, train) * pbytes


def _bnb_cpu_step_transient_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """bitsandbytes' CPU optimizer step: the largest of :func:`refplan.terms.bnb_cpu_step_bytes` over the
    trainable tensors (one tensor at a time)."""
    fp32_param = terms.trainable_dtype(train) == "fp32"
    eight = train.optim.caps.state is StateRule.ADAM_8BIT
    return max((terms.bnb_cpu_step_bytes(n, eight and not emb, fp32_param)
                for n, emb in terms.trainable_tensors(model, train)), default=0)


def _phase(name: str, parts: dict[str, int], train: TrainSpec) -> Phase:
    parts = {k: v for k, v in parts.items() if v}
    allocated = sum(parts.values())
    if train.device is Device.CUDA:
        parts["cublas workspace"] = terms.CUBLAS_WORKSPACE_BYTES
        allocated += terms.CUBLAS_WORKSPACE_BYTES
        parts["allocator slack"] = allocated * terms.ALLOCATOR_SLACK_NUM // terms.ALLOCATOR_SLACK_DEN
        parts["cuda context"] = terms.CUDA_CONTEXT_BYTES
    return Phase(name, tuple(parts.items()))


@dataclass(frozen=True)
class _Step:
    """What every phase of one step reads: the setup, its reference plan, and the terms computed once."""

    model: ModelSpec
    train: TrainSpec
    ref: ReferencePlan

    @property
    def rows(self) -> int:
        return self.train.sequences_per_forward

    @cached_property
    def static(self) -> dict[str, int]:
        """Bytes held through the whole step (per rank, after sharding)."""
        model, train = self.model, self.train
        ref_w = terms.reference_weight_bytes(model, train)
        if self.ref.sharded:
            ref_w = _div(ref_w, train.shards)  # TRL prepare_deepspeed / prepare_fsdp shard the reference too
        gathered = 0  # FSDP2: per phase, see _fsdp_gathered
        if train.sharding is Sharding.ZERO3:
            gathered = sharding_terms.zero3_gathered_bytes(model, train, self.zero3_keeps_gathered)
            if self.zero3_two_engines:
                gathered = sharding_terms.zero3_two_engine_backward_gathered_bytes(model, train)
            elif self.zero3_policy_runs_reference:
                gathered = sharding_terms.zero3_invalid_trace_gathered_bytes(model, train)
            elif self.zero3_kl_trace:  # the head, at the forward's end and the head's backward
                gathered = sharding_terms.zero3_kl_backward_gathered_bytes(model, train, "head")
        on_cpu = train.offload
        lora = terms.lora_weight_bytes(model, train)
        if train.sharding is Sharding.ZERO3:
            lora = _div(lora, train.shards)  # the engine partitions the adapters with the base weights
        elif fsdp_terms.enabled(train):
            lora = fsdp_terms.lora_shard_bytes(model, train)  # the adapters live in the layer units
        return {
            "policy weights": self.policy_weight_bytes,
            "lora weights": lora,
            # TRL's ZeRO-3 reference engine takes the user's DeepSpeed config, offload included
            "reference weights": 0 if (on_cpu.params_on_cpu and self.ref.sharded) else ref_w,
            "optimizer state": 0 if on_cpu.optimizer_on_cpu else _div(terms.optimizer_state_bytes(model, train),
                                                                       train.shards_of("optimizer")),
            "master weights": 0 if on_cpu.optimizer_on_cpu else sharding_terms.master_partition_bytes(model, train),
            "batch": terms.batch_bytes(train),
            "gathered params": gathered,
            "persistent params": sharding_terms.zero3_persistent_bytes(model, train,
                                                                       self.ref.sharded and self.ref.holds_copy),
            "gradient partition": sharding_terms.zero3_gradient_partition_bytes(model, train),
            "reduce bucket": sharding_terms.zero3_reduce_bucket_bytes(model, train),
        }

    @property
    def zero3_keeps_gathered(self) -> bool:
        """ZeRO-3: the policy keeps its gathered parameters from forward to backward
        (:func:`refplan.sharding_terms.zero3_policy_keeps_gathered`)."""
        return sharding_terms.zero3_policy_keeps_gathered(
            self.train, self.zero3_policy_runs_reference,
            sharding_terms.zero3_precompute_engine_on_policy(self.train, self.ref.precompute_pass))

    @property
    def zero3_policy_runs_reference(self) -> bool:
        """ZeRO-3: the reference forward runs through the policy engine (adapters off), a second, no-grad
        forward per step (:func:`refplan.sharding_terms.zero3_unreleased_backward_bytes`)."""
        return (self.train.sharding is Sharding.ZERO3 and self.ref.forward_per_step
                and not self.ref.holds_copy)

    @property
    def zero3_kl_trace(self) -> bool:
        """ZeRO-3: the policy coordinator's trace is KTO's KL forward alone
        (:func:`refplan.sharding_terms.zero3_kl_forward_trace`)."""
        return sharding_terms.zero3_kl_forward_trace(self.train, self.zero3_policy_runs_reference)

    @property
    def zero3_forward_frontier(self) -> list[tuple[int, int]] | None:
        """ZeRO-3: gathered bytes at each module fetch of the policy forward when prefetchers run ahead of
        it, as (decoder layers finished, bytes); None when no prefetch frontier is modelled."""
        model, train = self.model, self.train
        if self.zero3_two_engines:
            return sharding_terms.zero3_two_engine_forward(model, train)
        if self.zero3_kl_trace:
            engine = sharding_terms.zero3_precompute_engine_on_policy(train, self.ref.precompute_pass)
            return sharding_terms.zero3_kl_training_forward(model, train, engine)
        return None

    @property
    def zero3_two_engines(self) -> bool:
        """ZeRO-3: TRL's precompute engine and the training engine both prefetch the policy's parameters
        (:func:`refplan.sharding_terms.zero3_two_engine_forward`); the training engine's trace completes
        only without a second forward per step."""
        return (sharding_terms.zero3_precompute_engine_on_policy(self.train, self.ref.precompute_pass)
                and not self.train.method.caps.kl_forward)

    @cached_property
    def policy_weight_bytes(self) -> int:
        """The policy's weights on this GPU: its shard, or none when the shards live in CPU memory
        (the layers running are counted as gathered params)."""
        if self.train.offload.params_on_cpu:
            return 0
        return _div(terms.policy_weight_bytes(self.model, self.train), self.train.shards_of("params"))

    @cached_property
    def gradient_bytes(self) -> int:
        """Accumulated gradients on this GPU: the rank's shard; none with CPU offload, where DeepSpeed
        copies each gradient partition to CPU memory for CPU Adam (ZeRO-Offload) and FSDP's offload
        policy keeps gradient shards on CPU. The communication buckets are not counted."""
        if self.train.offload.optimizer_on_cpu:
            return 0
        return _div(terms.gradient_bytes(self.model, self.train), self.train.shards_of("grads"))

    @cached_property
    def layer_saved(self) -> list[int]:
        return act.per_layer_saved_bytes(self.model, self.train, self.rows)

    @cached_property
    def saved(self) -> int:
        """Everything the policy forward saves for backward, but the log-prob path."""
        model, train, rows = self.model, self.train, self.rows
        return (sum(self.layer_saved) + fwd.embedding_saved_bytes(model, train, rows)
                + fwd.final_norm_saved_bytes(model, train, rows) + fwd.rope_table_bytes(model, train, rows)
                + fwd.mask_bytes(model, train, rows) + fwd.outer_linears_saved_bytes(model, train, rows))

    @cached_property
    def head(self) -> tuple[int, int, int]:
        """(saved, forward transient, backward transient) of the log-prob path."""
        return logprob.head_bytes(self.model, self.train, self.rows)

    def autocast_copies(self, requires_grad: bool, ref_dtype=None) -> int:
        return fwd.autocast_weight_cache_bytes(self.model, self.train, requires_grad, ref_dtype)

    @cached_property
    def kbit_reference(self) -> tuple[Quant, bool, bool] | None:
        """How the reference forward's k-bit linears run, as ``(quant, eval mode, repacked for the CPU
        kernel)``, or None when they are not k-bit: a quantized separate copy (eval mode: TRL never
        trains it; ``from_pretrained`` returns it in eval mode), or a QLoRA policy's base with its
        adapters disabled or switched to "ref" (train mode: the policy is training)."""
        train = self.train
        if self.ref.holds_copy and train.ref_quant is not Quant.NONE:
            return train.ref_quant, True, terms.reference_repacked_on_cpu(self.model, train)
        if self.ref.forward_per_step and not self.ref.holds_copy and train.policy_quant is not Quant.NONE:
            return train.policy_quant, False, terms.policy_repacked_on_cpu(self.model, train)
        return None

    def kbit_forward_extra(self, rows: int, quant: Quant, eval_mode: bool, cpu_packed: bool) -> int:
        """The largest k-bit matmul temporaries of a no-grad forward of ``rows`` sequences
        (:func:`refplan.quant.no_grad_forward_transient_bytes`)."""
        train = self.train
        return quant_terms.largest_no_grad_forward_transient_bytes(
            self.model, rows * train.seq, quant, train.double_quant, train.compute_dtype, train.kbit_compute_dtype,
            train.device, eval_mode, cpu_packed)

    @cached_property
    def cpu_repack_bytes(self) -> int:
        """bitsandbytes' one-time CPU repack of a 4-bit model run in eval mode without grad (the separate
        reference's first forward; the policy's first precompute forward):
        :func:`refplan.quant.cpu_repack_transient_bytes` when it happens, else 0."""
        model, train = self.model, self.train
        if terms.reference_repacked_on_cpu(model, train) and self.ref.holds_copy:
            return quant_terms.largest_cpu_repack_transient_bytes(model)
        if terms.policy_repacked_on_cpu(model, train):
            return quant_terms.largest_cpu_repack_transient_bytes(model)
        return 0


def _precompute(step: _Step) -> Phase | None:
    """Reference log-probs computed before training (precompute strategy): the policy (and, under
    FSDP, a reference loaded for the pass) runs no-grad forwards of ``precompute_batch`` rows."""
    train, model = step.train, step.model
    if not step.ref.precompute_pass:
        return None
    pre_rows = (train.precompute_batch or train.batch) * (2 if train.method.caps.concatenates_pair else 1)
    pre_ref = 0
    if loads_reference_to_precompute(train):
        pre_ref = _div(terms.weight_bytes(model, train.reference_dtype, train.ref_quant, train.double_quant),
                       train.shards_of("params"))
    kbit = 0
    if train.policy_quant is not Quant.NONE:
        # the policy (adapters disabled) runs in eval mode: from_pretrained leaves it there
        packed = terms.policy_repacked_on_cpu(model, train)
        kbit = max(step.kbit_forward_extra(pre_rows, train.policy_quant, True, packed), step.cpu_repack_bytes)
    return _phase("precompute", {
        "policy weights": (fsdp_terms.precompute_policy_bytes(model, train) if fsdp_terms.enabled(train)
                           else step.policy_weight_bytes),
        "lora weights": terms.lora_weight_bytes(model, train),
        "reference weights": pre_ref,
        "activations": logprob.reference_forward_transient_bytes(model, train, pre_rows, kbit),
        "autocast weight copies": step.autocast_copies(not train.finetune.peft),
        **_fsdp_gathered(step, "precompute"),
    }, train)


def _fsdp_gathered(step: _Step, phase: str) -> dict[str, int]:
    """FSDP2's gathered units at a phase's peak (:mod:`refplan.fsdp_terms`); nothing for other engines,
    whose gathered layers are in ``_Step.static``."""
    model, train = step.model, step.train
    if not fsdp_terms.enabled(train):
        return {}
    if phase == "precompute":  # the reference TRL loads for the pass, one unit, gathered whole
        if not loads_reference_to_precompute(train):
            return {}  # PEFT: the unsharded policy, adapters off, runs the pass
        full = terms.weight_bytes(model, train.reference_dtype, train.ref_quant, train.double_quant)
        return {"gathered reference": 2 * full}
    if phase == "policy forward":
        return {"gathered params": fsdp_terms.policy_forward_gathered_bytes(model, train)}
    if phase == "reference forward":
        if step.ref.holds_copy:
            return {"gathered params": fsdp_terms.policy_held_bytes(model, train),
                    "gathered reference": fsdp_terms.reference_gathered_bytes(model, train)}
        return {"gathered params": fsdp_terms.policy_forward_gathered_bytes(model, train)}
    return {"gathered params": 0}


def _fsdp_prepare(step: _Step) -> Phase | None:
    """FSDP2 only: accelerate sharding the policy at the start of ``train`` -- the shards made, the
    unsharded originals not yet freed (:func:`refplan.fsdp_terms.prepare_original_bytes`), the
    reference already sharded at trainer construction, no optimizer state or batch yet."""
    model, train = step.model, step.train
    if not fsdp_terms.enabled(train):
        return None
    static = step.static
    return _phase("fsdp prepare", {
        "policy weights": static["policy weights"],
        "lora weights": static["lora weights"],
        "reference weights": static["reference weights"],
        "unsharded originals": fsdp_terms.prepare_original_bytes(model, train),
    }, train)


def _fsdp_layer_moment(step: _Step, parts: dict[str, int], activations: int, logprob_path: int) -> dict[str, int]:
    """FSDP2: a forward's peak may be at a decoder layer's copy-out rather than at the head (three units
    gathered, :func:`refplan.fsdp_terms.forward_layer_gathered_bytes`): ``parts`` at the head, or the
    layer moment with ``activations`` and ``logprob_path`` then alive, whichever is larger."""
    if not fsdp_terms.enabled(step.train):
        return parts
    layer = {**parts, "activations": activations, "logprob path": logprob_path, "reference forward": 0,
             "gathered params": fsdp_terms.forward_layer_gathered_bytes(step.model, step.train)}
    return layer if sum(layer.values()) > sum(parts.values()) else parts


def _policy_forward(step: _Step) -> Phase:
    head_saved, head_fwd, _ = step.head
    parts = {
        **step.static,
        "activations": step.saved,
        "logprob path": head_saved + head_fwd,
        # with checkpointing the layers keep no weight copies, but autocast's cache holds them
        # until the forward returns
        "autocast weight copies": step.autocast_copies(not step.train.finetune.peft) if step.train.grad_ckpt else 0,
        **_fsdp_gathered(step, "policy forward"),
    }
    # the top layer's copy-out: every layer's saved tensors but its own
    parts = _fsdp_layer_moment(step, parts, step.saved - step.layer_saved[-1], 0)
    frontier = step.zero3_forward_frontier
    if frontier:
        # prefetch frontiers gather much of the model early in the forward, while few activations
        # are saved yet: the largest of those moments, against the forward's end
        model, train, rows = step.model, step.train, step.rows
        before = (fwd.embedding_saved_bytes(model, train, rows) + fwd.rope_table_bytes(model, train, rows)
                  + fwd.mask_bytes(model, train, rows))
        for layers_done, gathered in frontier:
            mid = {**parts, "gathered params": gathered, "logprob path": 0,
                   "activations": before + sum(step.layer_saved[:layers_done])}
            parts = max(parts, mid, key=lambda d: sum(d.values()))
    return _phase("policy forward", parts, step.train)


def _reference_forward(step: _Step) -> Phase | None:
    """The reference's no-grad forward on top of the policy's saved activations (KTO: on the
    batch and its KL pairs, one at a time)."""
    train = step.train
    if not step.ref.forward_per_step:
        return None
    copies = 0
    if step.ref.holds_copy and step.ref.quant is Quant.NONE:
        copies = step.autocast_copies(True, train.reference_dtype)
    kbit = step.kbit_forward_extra(step.rows, *step.kbit_reference) if step.kbit_reference else 0
    parts = {
        **step.static,
        "activations": step.saved,
        "logprob path": step.head[0],
        "reference forward": logprob.reference_forward_transient_bytes(step.model, train, step.rows, kbit),
        "autocast weight copies": copies,
        **_fsdp_gathered(step, "reference forward"),
    }
    if not step.ref.holds_copy:  # the policy's own layer units (a separate reference is one unit)
        parts = _fsdp_layer_moment(step, parts, step.saved, step.head[0])
    ref_gathered = sharding_terms.zero3_reference_gathered_bytes(step.model, train,
                                                                 step.ref.sharded and step.ref.holds_copy)
    if ref_gathered:
        # ZeRO-3: the reference engine's prefetch holds the most mid-forward, before the log-prob path
        # runs (by then only the head is gathered); the larger of the two moments
        # A policy that does not keep its gathered parameters released them after each module of its
        # own forward (partitioned_param_coordinator.py ``release_sub_module``): none are held here.
        if not step.zero3_keeps_gathered:
            parts["gathered params"] = 0
        mid = {**parts, "reference forward": 0, "reference gathered params": ref_gathered}
        end = {**parts, "reference gathered params": sharding_terms.zero3_reference_head_bytes(step.model, train)}
        parts = max(mid, end, key=lambda d: sum(d.values()))
    if step.cpu_repack_bytes and step.ref.holds_copy:
        # the first step's reference forward repacks the 4-bit copy, before any optimizer state exists
        first = {**parts, "optimizer state": 0, "reference forward": logprob.reference_forward_transient_bytes(
            step.model, train, step.rows, step.cpu_repack_bytes)}
        if sum(first.values()) > sum(parts.values()):
            parts = first
    return _phase("reference forward", parts, train)


def _optimizer_step(step: _Step) -> Phase:
    model, train = step.model, step.train
    zero3 = train.sharding is Sharding.ZERO3
    return _phase("optimizer step", {
        **step.static,
        # ZeRO-3: the gradients are the partition buffer (static), and the backward's end released every
        # gathered parameter (partitioned_param_coordinator.py ``release_and_reset_all``)
        "gradients": 0 if zero3 else step.gradient_bytes,
        "gathered params": 0 if zero3 else step.static["gathered params"],
        "flattened gradients": sharding_terms.zero2_flat_gradient_bytes(step.gradient_bytes, train),
        # an offloaded optimizer steps on the CPU (DeepSpeedCPUAdam / FSDP's CPU shards)
        "optimizer transient": 0 if train.offload.optimizer_on_cpu else optimizer_transient_bytes(model, train),
        **_fsdp_gathered(step, "optimizer step"),
    }, train)


def timeline(model: ModelSpec, train: TrainSpec) -> list[tuple[str, str, int]]:
    """Memory over one step, moment by moment: ``(phase, moment, total bytes)`` for the precompute
    pass, the policy forward, the reference forward, each layer of the backward and the optimizer
    step -- the curve whose maximum :func:`estimate` reports."""
    _check_formula(model, train)
    check_lora_targets(train.lora_targets, model.linear_names)
    step = _Step(model, train, reference_plan(train))
    points = []
    for phase in (_precompute(step), _fsdp_prepare(step), _policy_forward(step), _reference_forward(step)):
        if phase is not None:
            points.append((phase.name, phase.name, phase.total_bytes))
    for label, parts in _backward_moments(step):
        points.append(("backward", label, _phase("backward", {**step.static, **_fsdp_gathered(step, "backward"), **parts},
                                                 train).total_bytes))
    opt = _optimizer_step(step)
    points.append((opt.name, opt.name, opt.total_bytes))
    return points


def _check_formula(model: ModelSpec, train: TrainSpec) -> None:
    """Refuse what no term here describes (``refplan.query.estimate_one`` sends it to the trace engine)."""
    if model.trace_only:
        raise PlanError("--engine", f"model_type {model.family!r} has no formula family; the trace engine plans it")
    from refplan.query import needs_trace, untraced_setting

    if needs_trace(model, train):
        flag, why = untraced_setting([train]).split(": ", 1)
        raise PlanError(flag.split()[0], f"{why}; the trace engine plans it (refplan.query.estimate_one)")


def estimate(model: ModelSpec, train: TrainSpec, gpu=None) -> Estimate:
    """Peak memory per device for one training step of ``train`` on ``model``.

    ``gpu`` is an optional :class:`refplan.gpus.GPU`; with it the estimate says whether it fits.
    """
    _check_formula(model, train)
    check_lora_targets(train.lora_targets, model.linear_names)
    step = _Step(model, train, reference_plan(train))
    phases = [_precompute(step), _fsdp_prepare(step), _policy_forward(step), _reference_forward(step),
              _backward(step), _optimizer_step(step)]
    phases = tuple(p for p in phases if p is not None)
    est = Estimate(train.method.value, train.strategy.value, train.finetune.value, phases)
    if gpu is not None:
        est = replace(est, fits=est.peak_bytes <= gpu.memory_bytes, gpu=gpu.name, gpu_bytes=gpu.memory_bytes)
    return est


def estimate_matrix(model: ModelSpec, base: TrainSpec, methods=None, strategies=None, gpu=None) -> list[Estimate]:
    """Every applicable method x strategy for ``base``'s fine-tune mode (or the ones named)."""
    rows = []
    for meth in methods or list(Method):
        for strat in applicable_strategies(meth, base.finetune):
            if strategies and strat not in strategies:
                continue
            if meth is Method.KTO and base.batch < 2:
                continue
            keeps_quant = strat in (Strategy.SEPARATE, Strategy.PRECOMPUTE)
            train = replace(base, method=meth, strategy=strat, ref_quant=base.ref_quant if keeps_quant else Quant.NONE)
            rows.append(estimate(model, train, gpu))
    return rows


__all__ = ["estimate", "estimate_matrix", "timeline", "PHASES"]
