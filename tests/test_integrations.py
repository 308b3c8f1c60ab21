"""A trainer speaks the metrics protocol without regexes: emit()/Meter for a plain loop, the Lightning callback and
the Hugging Face TrainerCallback, each run for real (a small Lightning module, a small GPT-2 under
transformers' Trainer, on the CPU) and read back by the monitor's own reader (probe.metrics.LiveMetrics)."""
import json
import time

import pytest

from hlrp_ladder import integrations
from hlrp_ladder.probe.metrics import LiveMetrics
from hlrp_ladder.records import METRICS_ENV, MetricsPatterns


def read_back(path, tmp_path):
    live = LiveMetrics(path, tmp_path / "log.txt", MetricsPatterns(), time.time() - 600)
    live.poll(1.0)
    return live.finish([(0.0, 1, None, None, None)], 600.0)


def events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.pure
def test_emit_writes_once_per_probe_from_rank_zero_and_nothing_outside_a_probe(monkeypatch, tmp_path):
    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv(METRICS_ENV, str(path))
    monkeypatch.setenv("RANK", "1")
    integrations.emit("train", step=1)          # rank 1 of a distributed job: rank 0 speaks for it
    assert not path.exists()
    monkeypatch.setenv("RANK", "0")
    integrations.emit("train", step=1)
    assert [e["step"] for e in events(path)] == [1]
    monkeypatch.delenv(METRICS_ENV)
    integrations.emit("train", step=2)          # outside a probe: nothing to write to, nothing raised
    assert [e["step"] for e in events(path)] == [1]


@pytest.mark.pure
def test_torchs_gpu_figures_reach_the_record_and_each_validation(monkeypatch, tmp_path):
    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv(METRICS_ENV, str(path))
    integrations.emit("train", step=5, gpu_allocated=3 << 30, gpu_reserved=11 << 30, gpu_max_reserved=12 << 30)
    integrations.emit("val_end", step=5, val_loss=1.0, gpu_allocated=4 << 30)
    m = read_back(path, tmp_path)
    assert (m.torch_allocated_bytes, m.torch_reserved_bytes, m.torch_max_reserved_bytes) == (4 << 30, 11 << 30, 12 << 30)
    assert m.val_points[0].torch_allocated_bytes == 4 << 30


@pytest.mark.pure
def test_the_meter_writes_rates_validations_and_done(monkeypatch, tmp_path):
    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv(METRICS_ENV, str(path))
    meter = integrations.Meter(batch_size=8)
    for step in range(1, 7):
        time.sleep(0.01)
        meter.train(step, loss=1.0 / step)
        if step % 3 == 0:
            meter.val_end(step, val_loss=0.5)
    meter.done(6, artifact="/tmp/model.pt")
    kinds = [e["event"] for e in events(path)]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("val_end") == 2
    m = read_back(path, tmp_path)
    assert m.source == "jsonl" and m.last_step == 6 and len(m.val_points) == 2
    assert 0 < m.step_per_s < 200 and m.samples_per_s == pytest.approx(8 * m.step_per_s, rel=0.01)
    assert m.artifact == "/tmp/model.pt"


@pytest.mark.trainer
def test_the_lightning_callback_speaks_the_protocol(monkeypatch, tmp_path):
    import lightning as L
    import torch

    from hlrp_ladder.integrations.lightning import HlrpLadderCallback

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(16, 1)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.TensorDataset(torch.randn(256, 16), torch.randn(256, 1))
    loader = lambda: torch.utils.data.DataLoader(data, batch_size=8)  # noqa: E731
    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv(METRICS_ENV, str(path))
    trainer = L.Trainer(max_steps=12, val_check_interval=4, limit_val_batches=1, callbacks=[HlrpLadderCallback(2)],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
                        default_root_dir=tmp_path)
    trainer.fit(Tiny(), loader(), loader())
    m = read_back(path, tmp_path)
    assert m.last_step == 12 and [p.step for p in m.val_points] == [4, 8, 12]
    assert all(p.val_loss is not None for p in m.val_points)
    assert m.samples_per_s == pytest.approx(8 * m.step_per_s, rel=0.01)
    assert events(path)[-1]["event"] == "done"


@pytest.mark.trainer
def test_the_hugging_face_callback_speaks_the_protocol(monkeypatch, tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from hlrp_ladder.integrations.hf import HlrpLadderHF

    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            ids = torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "labels": ids}

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv(METRICS_ENV, str(path))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4,
                             eval_strategy="steps", eval_steps=3, logging_steps=1, report_to=[], use_cpu=True,
                             save_strategy="no", disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=Tokens(), eval_dataset=Tokens(),
            callbacks=[HlrpLadderHF(every_n_steps=2)]).train()
    m = read_back(path, tmp_path)
    assert m.last_step == 6 and [p.step for p in m.val_points] == [3, 6]
    assert all(p.val_loss is not None for p in m.val_points)
    assert m.samples_per_s == pytest.approx(4 * m.step_per_s, rel=0.01)
    train = [e for e in events(path) if e["event"] == "train"]
    assert [e["step"] for e in train] == [2, 4, 6] and all("loss" in e for e in train)
