"""Lightning, and optuna-dashboard on a metasam study (the extras the README installs for
the tests)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
import torch.nn.functional as F

from metasam import UniversalSAM
from metasam.training import TrainConfig, Trial

L = pytest.importorskip("lightning")
from metasam.integrations.lightning import SharpnessAwareModule  # noqa: E402


class LitNet(SharpnessAwareModule):
    """As a user writes it: the network, one pass's loss, and the optimizer."""

    def __init__(self, net: torch.nn.Module, spec: str, epochs: int, seed: int,
                 fp16: bool = False) -> None:
        super().__init__()
        self.net, self.spec, self.epochs, self.seed, self.fp16 = net, spec, epochs, seed, fp16

    def forward(self, x):
        return self.net(x)

    def training_loss(self, batch):
        x, y = batch
        return F.cross_entropy(self(x).float(), y)

    def configure_optimizers(self):
        scaler = torch.amp.GradScaler("cpu") if self.fp16 else None
        optimizer = UniversalSAM(self.parameters(), torch.optim.SGD, self.spec, model=self,
                                 seed=self.seed, lr=0.05, momentum=0.9, nesterov=True,
                                 weight_decay=5e-4, scaler=scaler)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def _config(spec: str, epochs: int) -> TrainConfig:
    return TrainConfig(dataset="digits", model="mlp", preset=spec, epochs=epochs, lr=0.05,
                       momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine",
                       device="cpu", seed=3)


def _fit(module: SharpnessAwareModule, loader, epochs: int, tmp_path, **trainer) -> None:
    L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=str(tmp_path), **trainer).fit(module, train_dataloaders=loader)


@pytest.mark.parametrize("spec", ["sam", "frob_sam", "ssam"])
def test_lightning_reproduces_metasams_own_loop(spec: str, tmp_path) -> None:
    """Same seed, same batches: the Lightning run ends on the weights of metasam's trainer."""
    epochs = 2
    config = _config(spec, epochs)
    own = Trial(config)
    for _ in range(epochs):
        own.train_epoch()
    twin = Trial(config)  # same initial weights and batch order; its optimizer stays unused
    start = [p.detach().clone() for p in twin.model.parameters()]
    module = LitNet(twin.model, spec, epochs, config.seed)
    if spec == "ssam":  # the trainer's Fisher examples, so that the masks agree
        data = twin.splits.train

        def fisher_batch(batch):
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + module.current_epoch)
            index = torch.randperm(len(data), generator=gen)[:twin.spec.measure.fisher_samples]
            return data.normalize(data.x[index]), data.y[index], F.cross_entropy

        module.fisher_batch = fisher_batch
    _fit(module, twin.loader, epochs, tmp_path)
    moved = 0.0
    for a, b, s in zip(own.model.parameters(), twin.model.parameters(), start):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        moved += float((a - s).abs().sum().detach())
    assert moved > 1.0  # training did move the weights
    optimizer = module.trainer.optimizers[0]
    assert optimizer.steps == own.optimizer.steps
    assert optimizer.param_groups[0]["lr"] == pytest.approx(own.optimizer.param_groups[0]["lr"])


def test_lightning_fp16_through_the_optimizers_scaler(tmp_path) -> None:
    """fp16 under Lightning is metasam's own fp16 loop, bit for bit: the same autocast passes,
    the same scaler (scale and growth count), the same weights (fp32 differs by ~1e-3)."""
    epochs = 1
    config = _config("sam", epochs)
    own = Trial(dataclasses.replace(config, fp16=True))
    own.train_epoch()
    twin = Trial(config)
    module = LitNet(twin.model, "sam", epochs, config.seed, fp16=True)
    _fit(module, twin.loader, epochs, tmp_path)
    optimizer = module.trainer.optimizers[0]
    assert optimizer.scaler is not None and optimizer.steps == own.optimizer.steps
    assert optimizer.scaler.state_dict() == own.optimizer.scaler.state_dict()
    for a, b in zip(own.model.parameters(), twin.model.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_lightning_16_mixed_is_refused_with_the_way_out(tmp_path) -> None:
    """Lightning's fp16 plugin (what precision="16-mixed" gives on a GPU; on a CPU Lightning
    would switch to bf16, so the plugin is passed explicitly)."""
    from lightning.pytorch.plugins import MixedPrecision

    config = _config("sam", 1)
    twin = Trial(config)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(ValueError, match="precision='32-true' with UniversalSAM"):
        _fit(LitNet(twin.model, "sam", 1, 0), twin.loader, 1, tmp_path, plugins=[plugin])


# --- optuna-dashboard -----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_dashboard_serves_a_finished_study_with_metasams_attributes(tmp_path,
                                                                   ray_cluster) -> None:
    pytest.importorskip("optuna_dashboard")
    from _util import write_study

    from metasam.tuning import StudyConfig
    from metasam.tuning.runner import tune_study

    path = write_study(tmp_path, name="dash", trials=3, epochs=2, concurrency=1)
    config = StudyConfig.from_yaml(path)
    tune_study(config, address=ray_cluster, verbose=0)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "metasam", "dashboard", str(path),
                               "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-2000:]
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.5)
        study_id = next(s["study_id"] for s in studies if s["study_name"] == "dash")
        trials = _get(f"http://127.0.0.1:{port}/api/studies/{study_id}?after=0")["trials"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert len(trials) == 3
    # what the dashboard serves is what the storage holds, attribute by attribute
    stored = {t.number: t for t in config.load_study().trials}
    for trial in trials:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        own = stored[trial["number"]]
        assert set(attrs) == set(own.user_attrs)
        assert json.loads(attrs["spec"]) == json.loads(own.user_attrs["spec"])
        assert attrs["label"] == str(own.user_attrs["label"])
        assert attrs["epochs"] == str(own.user_attrs["epochs"])
        assert attrs["full_budget"] == str(own.user_attrs["full_budget"])
        if own.value is not None:
            assert trial["values"] == [pytest.approx(own.value, rel=1e-12)]
    assert any(t["state"] == "Complete" and t["values"] for t in trials)


def test_dashboard_without_a_study_is_a_one_line_error(tmp_path) -> None:
    from _util import write_study

    from metasam.cli import main

    path = write_study(tmp_path, name="never")
    assert main(["dashboard", str(path)]) == 2
    assert not list(tmp_path.glob("*.db"))


# --- Hugging Face Trainer --------------------------------------------------------------------

class _TinyClassifier(torch.nn.Module):
    """What the Trainer needs of a model: keyword inputs, a loss when given labels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 3))
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, labels=None):
        logits = self.net(x)
        if labels is None:
            return {"logits": logits}
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


@pytest.mark.parametrize("spec", ["frob_sam", "sam"])
def test_hugging_face_trainer_takes_exactly_universal_sams_steps(spec: str, tmp_path) -> None:
    """The Trainer's run equals a hand-written UniversalSAM loop over the same batches, bit
    for bit: each step is one UniversalSAM step (1 + n passes), never a second base step."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import copy

    from transformers import TrainingArguments

    from metasam.integrations.transformers import SharpnessAwareTrainer

    g = torch.Generator().manual_seed(1)
    data = [{"x": torch.randn(8, generator=g), "labels": int(torch.randint(3, (1,),
                                                                           generator=g))}
            for _ in range(48)]
    model = _TinyClassifier()
    start = copy.deepcopy(model.state_dict())
    batches = []

    def record(module, args, kwargs):          # the batch of each step's unperturbed pass
        batches.append((kwargs["x"].clone(), kwargs["labels"].clone()))

    model.register_forward_pre_hook(record, with_kwargs=True)
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=16, num_train_epochs=2,
                             learning_rate=0.05, lr_scheduler_type="constant", report_to=[],
                             save_strategy="no", use_cpu=True, seed=3, max_grad_norm=0.0,
                             logging_strategy="no", disable_tqdm=True)
    trainer = SharpnessAwareTrainer(model=model, args=args, train_dataset=data, sam=spec)
    trainer.train()
    sam = trainer.sam
    passes = 1 + sam.spec.n
    assert len(batches) == 6 * passes and sam.steps == 6   # 3 batches × 2 epochs
    reference = _TinyClassifier()
    reference.load_state_dict(start)
    own = UniversalSAM(reference.parameters(), torch.optim.SGD, spec, model=reference,
                       lr=0.05, momentum=0.9, weight_decay=0.0, seed=3, total_steps=6)
    for x, y in batches[::passes]:
        def closure(x=x, y=y):
            own.zero_grad()
            loss = F.cross_entropy(reference.net(x), y)
            loss.backward()
            return loss.detach()
        own.step(closure)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_hugging_face_trainer_refuses_accumulation_with_the_way_out(tmp_path) -> None:
    pytest.importorskip("transformers")
    from transformers import TrainingArguments

    from metasam.errors import ConfigError
    from metasam.integrations.transformers import SharpnessAwareTrainer

    args = TrainingArguments(str(tmp_path), gradient_accumulation_steps=2, report_to=[],
                             use_cpu=True)
    with pytest.raises(ConfigError, match="accumulating_closure"):
        SharpnessAwareTrainer(model=_TinyClassifier(), args=args, train_dataset=[])
