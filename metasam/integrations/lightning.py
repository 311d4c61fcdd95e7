"""Train a LightningModule with :class:`~metasam.UniversalSAM` (``metasam[lightning]`` extra).

A sharpness-aware step evaluates the loss 1 + n times on one batch, so it needs Lightning's
*manual optimization* and a closure; :class:`SharpnessAwareModule` does both. Subclass it, write
what one pass computes in :meth:`~SharpnessAwareModule.training_loss`, and return a UniversalSAM
(any spec, or a study's best export through :func:`metasam.load_optimizer`) from
``configure_optimizers``, with or without a scheduler::

    import lightning as L, torch, torch.nn.functional as F
    from metasam import UniversalSAM
    from metasam.integrations.lightning import SharpnessAwareModule

    class LitNet(SharpnessAwareModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

        def training_loss(self, batch):                   # one pass, mean over the batch
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            optimizer = UniversalSAM(self.parameters(), torch.optim.SGD, "frob_sam", model=self,
                                     lr=0.05, momentum=0.9)
            # or: metasam.load_optimizer("studies/digits-noisy.best.json", self.parameters(),
            #                            model=self)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
            return {"optimizer": optimizer, "lr_scheduler": scheduler}

    L.Trainer(max_epochs=10).fit(LitNet(), train_loader)

What it does per batch: the closure zeroes the gradients, runs :meth:`training_loss` and
``manual_backward``, and ``optimizer.step(closure)`` runs it at x and at each x + ρv_i; the step's
loss is logged as ``train_loss`` and, for members with a sharpness term, ``train_sharpness``.
Schedulers step as configured (``"interval": "epoch"`` (default) or ``"step"``). SSAM's Fisher
mask is refreshed on its schedule from the first batch of the epoch
(:meth:`~SharpnessAwareModule.fisher_batch`).

A spec whose ``schedule`` starts late needs the run's length:
``UniversalSAM(..., total_steps=self.trainer.estimated_stepping_batches)``.

Precision: ``"32-true"`` and ``"bf16-mixed"`` work as usual. Lightning's ``"16-mixed"`` runs the
closure once before a GradScaler step, which cannot work for a step that needs the closure 1 + n
times; for fp16, keep ``precision="32-true"`` and give the optimizer a GradScaler
(``UniversalSAM(..., scaler=torch.amp.GradScaler(device_type))``): the forward then runs under
fp16 autocast and the optimizer handles the scaling. Lightning's ``gradient_clip_val`` is not
available in manual optimization: use ``UniversalSAM(..., max_grad_norm=...)``. Hooks that
Lightning runs after each closure (``on_before_optimizer_step``) run once per pass.
"""

from __future__ import annotations

import contextlib
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from metasam.optim import UniversalSAM

__all__ = ["SharpnessAwareModule"]


class SharpnessAwareModule(L.LightningModule):
    """A LightningModule whose optimizer is a :class:`~metasam.UniversalSAM` (see the module
    docstring for an example)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    # --- what subclasses write --------------------------------------------------------------------

    def training_loss(self, batch: Any) -> Tensor:
        """The mean training loss of ``batch`` at the current weights (one forward pass)."""
        raise NotImplementedError("a SharpnessAwareModule needs training_loss(batch) -> loss")

    def fisher_batch(self, batch: Any) -> tuple[Tensor, Tensor, Any]:
        """``(inputs, targets, loss_fn)`` for SSAM's Fisher mask, scored as
        ``loss_fn(self(input), target)`` one example at a time (so the module needs a
        ``forward``): by default the epoch's first ``(inputs, targets)`` batch with
        cross-entropy; override for other examples or losses."""
        inputs, targets = batch[0], batch[1]
        return inputs, targets, F.cross_entropy

    # --- Lightning hooks --------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        self._universal_sam()  # checks what configure_optimizers returned
        precision = str(self.trainer.precision)
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError(
                f"Trainer(precision={precision!r}) steps through a GradScaler that calls the "
                "closure once, but a UniversalSAM step needs it 1 + n times; allowed: "
                "precision='32-true' with UniversalSAM(..., scaler=torch.amp.GradScaler(...)), "
                "or 'bf16-mixed'")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        lightning_optimizer = self.optimizers()
        optimizer = self._universal_sam()
        measure = optimizer.spec.measure
        if (batch_idx == 0 and measure.kind == "sparse_ascent" and not optimizer.spec.is_plain
                and self.current_epoch % measure.refresh_epochs == 0):
            if type(self).forward is torch.nn.Module.forward:
                raise TypeError(f"{type(self).__name__}: SSAM's Fisher mask scores examples "
                                "through the module's forward(inputs); define forward")
            inputs, targets, loss_fn = self.fisher_batch(batch)
            optimizer.update_fisher_mask(self, loss_fn, inputs, targets)
        scaler = optimizer.scaler
        fp16 = scaler is not None and scaler.is_enabled()

        def closure() -> Tensor:
            optimizer.zero_grad()
            context = (torch.autocast(self.device.type, dtype=torch.float16) if fp16
                       else contextlib.nullcontext())
            with context:
                loss = self.training_loss(batch)
            self.manual_backward(scaler.scale(loss) if fp16 else loss)
            return loss

        loss = lightning_optimizer.step(closure=closure)
        info = optimizer.last_step
        # device tensors: no host read per step (a step judged on the device and not applied
        # logs its values too; its error surfaces at the epoch's end)
        if info is not None and not info.skipped_on_host:
            self.log("train_loss", loss.detach(), prog_bar=True)
            sharpness = info.tensors.get("sharpness")
            if sharpness is not None:
                self.log("train_sharpness", sharpness)
        self._step_schedulers("step")
        return loss.detach()

    def on_train_epoch_end(self) -> None:
        self._universal_sam().check()   # the epoch's step verdicts: one host read
        self._step_schedulers("epoch")

    # --- internals ------------------------------------------------------------------------------

    def _universal_sam(self) -> UniversalSAM:
        optimizers = self.trainer.optimizers
        if len(optimizers) != 1 or not isinstance(optimizers[0], UniversalSAM):
            found = ", ".join(type(o).__name__ for o in optimizers) or "none"
            raise TypeError("a SharpnessAwareModule's configure_optimizers must return one "
                            f"metasam.UniversalSAM (got: {found})")
        return optimizers[0]

    def _step_schedulers(self, interval: str) -> None:
        for config in self.trainer.lr_scheduler_configs:
            if config.interval != interval:
                continue
            count = self.global_step if interval == "step" else self.current_epoch + 1
            if count % config.frequency == 0:
                config.scheduler.step()
