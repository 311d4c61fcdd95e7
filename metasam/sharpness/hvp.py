"""Hessian-vector products of a model's loss over a fixed evaluation set, batched over probes."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor], Tensor]
BACKENDS = ("auto", "batched", "loop")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in evaluation mode inside the block; each module's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def _affine_batchnorm(self: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = torch.rsqrt(self.running_var + self.eps)
    if self.weight is not None:
        scale = self.weight * scale
    shift = -self.running_mean * scale
    if self.bias is not None:
        shift = shift + self.bias
    return x * scale.reshape(shape) + shift.reshape(shape)


@contextlib.contextmanager
def explicit_batchnorm(model: nn.Module) -> Iterator[None]:
    """Evaluation-mode BatchNorm layers written as the per-channel affine map they compute.

    Same function, but its second derivatives are plain products: PyTorch's generic BatchNorm
    double-backward costs several times more (2.6× on a small CNN's Hessian-vector product).
    """
    patched = []
    for module in model.modules():
        if (isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training
                and module.running_mean is not None and "forward" not in vars(module)):
            module.forward = _affine_batchnorm.__get__(module)  # type: ignore[method-assign]
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


class HessianOperator:
    """v ↦ Hv for H the Hessian of the mean loss over ``batches`` at the model's current weights.

    The loss over the evaluation set is Σ_b (n_b/N)·loss_fn(model(x_b), y_b) with ``loss_fn``
    averaging over its batch, so batches of unequal size are weighted correctly. The model runs in
    evaluation mode (BatchNorm uses its running statistics; no augmentation is involved: the
    batches are fixed) and gets its modes back afterwards.

    :meth:`matvec` takes probes as rows of a (k, d) tensor over the flattened parameters and
    returns the (k, d) products in float64. Per batch, the forward pass and the differentiable
    gradient are computed once and shared by all probes (PyHessian recomputes both per probe);
    the second backward then runs either batched over ``chunk`` probes at a time
    (``backend="batched"``, ``is_grads_batched``) or once per probe (``"loop"``). ``"auto"``
    batches on GPUs and for models without convolutions, and loops for convolutional models on
    the CPU, where vmapped convolution backward passes are slower than a loop (see
    docs/benchmarks.md).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn,
                 batches: Sequence[tuple[Tensor, Tensor]],
                 params: Sequence[Tensor] | None = None, chunk: int = 16,
                 backend: str = "auto", cache: bool | None = None) -> None:
        if not batches:
            raise ValueError("HessianOperator needs at least one batch")
        self.model = model
        self.loss_fn = loss_fn
        self.batches = list(batches)
        total = sum(int(y.shape[0]) for _, y in self.batches)
        self.weights = [int(y.shape[0]) / total for _, y in self.batches]
        self.params = list(params) if params is not None else [
            p for p in model.parameters() if p.requires_grad]
        self.numels = [p.numel() for p in self.params]
        self.dim = sum(self.numels)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.chunk = max(1, chunk)
        self.products = 0  # Hessian-vector products computed so far
        self.on_products: Callable[[int], None] | None = None   # told after each matvec
        if backend not in BACKENDS:
            raise ValueError(f"backend: unknown value {backend!r}; allowed: "
                             f"{', '.join(BACKENDS)}")
        if backend == "auto":
            has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
            backend = "batched" if self.device.type == "cuda" or not has_conv else "loop"
        self.backend = backend
        self._batched = backend == "batched"
        examples = sum(int(y.shape[0]) for _, y in self.batches)
        # Keeping every batch's differentiable gradient (its double-backward graph) between
        # calls saves the forward and first backward pass of each call — what single-vector
        # Lanczos steps spend most of their time on — at the memory of all those graphs.
        self.cache = cache if cache is not None else examples * self.dim <= 2_000_000_000
        self._graphs: list[Sequence[Tensor]] | None = None
        self._pending: list[Sequence[Tensor]] = []

    def flat_params(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _views(self, rows: Tensor) -> list[Tensor]:
        return [piece.reshape(rows.shape[0], *p.shape)
                for piece, p in zip(rows.split(self.numels, dim=1), self.params, strict=True)]

    def matvec(self, vectors: Tensor) -> Tensor:
        """H·v for each row v of ``vectors`` (shape (k, d) or (d,)); float64 result."""
        single = vectors.ndim == 1
        v = vectors.reshape(-1, self.dim).to(self.device, self.dtype)
        out = torch.zeros(v.shape[0], self.dim, dtype=torch.float64, device=self.device)
        with eval_mode(self.model), explicit_batchnorm(self.model), torch.enable_grad():
            for index, ((x, y), weight) in enumerate(zip(self.batches, self.weights,
                                                         strict=True)):
                grads = self._gradient(index, x, y)
                for start in range(0, v.shape[0], self.chunk):
                    rows = v[start:start + self.chunk]
                    out[start:start + rows.shape[0]] += weight * self._products(grads, rows)
        self.products += v.shape[0]
        if self.on_products is not None:
            self.on_products(self.products)
        return out[0] if single else out

    def _gradient(self, index: int, x: Tensor, y: Tensor) -> Sequence[Tensor]:
        if self._graphs is not None:
            return self._graphs[index]
        grads = torch.autograd.grad(self.loss_fn(self.model(x), y), self.params,
                                    create_graph=True)
        if self.cache:
            if index == 0:
                self._pending = []
            self._pending.append(grads)
            if index == len(self.batches) - 1:
                self._graphs = self._pending
        return grads

    def release(self) -> None:
        """Drop the cached graphs (their memory)."""
        self._graphs = None
        self._pending = []

    def _products(self, grads: Sequence[Tensor], rows: Tensor) -> Tensor:
        if self._batched:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # vmap fallback notices
                    hv = torch.autograd.grad(grads, self.params, grad_outputs=self._views(rows),
                                             retain_graph=True, is_grads_batched=True,
                                             allow_unused=True)
                return self._flatten(hv, rows.shape[0])
            except RuntimeError:
                self._batched = False  # an op without a batching rule: one probe at a time
        out = []
        for row in rows:
            hv = torch.autograd.grad(grads, self.params, grad_outputs=[
                view[0] for view in self._views(row[None])], retain_graph=True, allow_unused=True)
            out.append(self._flatten([None if h is None else h[None] for h in hv], 1))
        return torch.cat(out)

    def _flatten(self, hv: Sequence[Tensor | None], k: int) -> Tensor:
        return torch.cat([torch.zeros(k, n, dtype=torch.float64, device=self.device)
                          if h is None else h.reshape(k, -1).double()
                          for h, n in zip(hv, self.numels, strict=True)], dim=1)

    def dense(self) -> Tensor:
        """The full d×d Hessian (d products); only for small models."""
        return self.matvec(torch.eye(self.dim, dtype=self.dtype, device=self.device))


def batches_from(x: Tensor, y: Tensor, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """Fixed evaluation batches from tensors already on the device."""
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
