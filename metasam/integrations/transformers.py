"""Train with Hugging Face's ``Trainer`` and :class:`~metasam.UniversalSAM` (needs
``transformers`` and ``accelerate``: ``pip install 'transformers[torch]'``).

A sharpness-aware step evaluates the loss 1 + n times on one batch, so it needs a closure;
the ``Trainer`` computes one loss and then calls ``optimizer.step()`` itself.
:class:`SharpnessAwareTrainer` runs the whole step in ``training_step`` — the closure computes
``compute_loss`` on the batch and backpropagates through ``accelerator.backward`` — and gives
the ``Trainer`` an optimizer whose ``step()`` is the step already taken, so nothing steps
twice; learning-rate schedulers, logging, evaluation, checkpoints and callbacks work as usual::

    from transformers import TrainingArguments
    import metasam
    from metasam.integrations.transformers import SharpnessAwareTrainer

    args = TrainingArguments("out", learning_rate=0.05, num_train_epochs=3,
                             lr_scheduler_type="cosine", report_to=[])
    trainer = SharpnessAwareTrainer(model=model, args=args, train_dataset=train,
                                    sam="frob_sam")          # a preset, a spec, or:
    # sam=metasam.load_optimizer("studies/digits-noisy.best.json", model.parameters(),
    #                            model=model)
    trainer.train()

With a spec (``sam="frob_sam"``, a :class:`~metasam.SharpnessSpec` or a dict) the optimizer is
``UniversalSAM(model.parameters(), torch.optim.SGD, spec, lr=args.learning_rate,
momentum=0.9, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm)``, with
``total_steps`` from the run's length (``sam_base`` and ``sam_kwargs`` change the base
optimizer and its arguments). ``args.max_grad_norm`` clips the *combined* gradient inside the
step (the ``Trainer``'s own clipping afterwards then finds nothing left to clip). Gradient
accumulation over the ``Trainer``'s micro-batches is refused: give the closure the
micro-batches instead (:func:`metasam.optim.accumulating_closure`). fp16 through the
``Trainer`` is refused for the reason Lightning's is (one GradScaler step per closure call);
bf16 works.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from metasam.errors import ConfigError
from metasam.optim import UniversalSAM

__all__ = ["SharpnessAwareTrainer"]


class _TakenInTrainingStep(torch.optim.Optimizer):
    """What the ``Trainer`` holds: the UniversalSAM's parameter groups (the same list, so
    learning-rate schedulers act on it) and state; ``step()`` without a closure is the step
    :meth:`SharpnessAwareTrainer.training_step` already took."""

    def __init__(self, sam: UniversalSAM) -> None:  # no Optimizer.__init__: nothing to own
        self.sam = sam
        self.defaults = sam.defaults
        self.param_groups = sam.param_groups
        self.state = sam.state
        from collections import OrderedDict

        self._optimizer_step_pre_hooks: dict[int, Any] = OrderedDict()
        self._optimizer_step_post_hooks: dict[int, Any] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: dict[int, Any] = OrderedDict()
        self._optimizer_state_dict_post_hooks: dict[int, Any] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: dict[int, Any] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: dict[int, Any] = OrderedDict()

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        return None if closure is None else self.sam.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sam.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.sam.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sam.load_state_dict(state_dict)
        self.param_groups = self.sam.param_groups

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sam!r})"


class SharpnessAwareTrainer(Trainer):
    """A ``transformers.Trainer`` whose every step is a :class:`~metasam.UniversalSAM` step
    (see the module docstring). ``sam``: a UniversalSAM, a preset name, a spec or a dict."""

    def __init__(self, *args: Any, sam: Any = "sam", sam_base: type = torch.optim.SGD,
                 sam_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.args.gradient_accumulation_steps > 1:
            raise ConfigError("gradient_accumulation_steps",
                              f"{self.args.gradient_accumulation_steps}: a sharpness-aware step "
                              "needs every micro-batch in its closure", "1 (accumulate in the "
                              "closure: metasam.optim.accumulating_closure)")
        if self.args.fp16:
            raise ConfigError("fp16", "the Trainer's GradScaler steps once per closure call",
                              "bf16, or fp32 with UniversalSAM(..., scaler=GradScaler())")
        self._sam_choice, self._sam_base = sam, sam_base
        self._sam_kwargs = {"momentum": 0.9, **(sam_kwargs or {})}

    @property
    def sam(self) -> UniversalSAM:
        """The UniversalSAM that takes the steps (once the optimizer exists)."""
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)   # accelerate's wrap
        if not isinstance(optimizer, _TakenInTrainingStep):
            raise RuntimeError("the optimizer is created when training starts")
        return optimizer.sam

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        if self.optimizer is not None and isinstance(self.optimizer, _TakenInTrainingStep):
            return self.optimizer
        if isinstance(self.optimizer, UniversalSAM):   # optimizers=(sam, scheduler)
            sam = self.optimizer
        elif isinstance(self._sam_choice, UniversalSAM):
            sam = self._sam_choice
        else:
            model = model if model is not None else self.model
            sam = UniversalSAM(model.parameters(), self._sam_base, self._sam_choice,
                               model=model, lr=self.args.learning_rate,
                               weight_decay=self.args.weight_decay,
                               max_grad_norm=self.args.max_grad_norm or None,
                               total_steps=self._total_steps(), seed=self.args.seed,
                               **self._sam_kwargs)
        self.optimizer = _TakenInTrainingStep(sam)
        return self.optimizer

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self._num_training_steps = num_training_steps
        super().create_optimizer_and_scheduler(num_training_steps)

    def _total_steps(self) -> int | None:
        return getattr(self, "_num_training_steps", None)

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> torch.Tensor:
        model.train()
        inputs = self._prepare_inputs(inputs)
        sam = self.sam

        def closure() -> torch.Tensor:
            sam.zero_grad(set_to_none=True)
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs)
            self.accelerator.backward(loss)
            return loss.detach()

        return sam.step(closure).detach()
