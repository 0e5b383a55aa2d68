"""Pieces of the pretraining loop that need no training run: schedules, parameter groups, spike detection,
batch arithmetic, FLOP counting, labels for packed blocks, the CLI wiring."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch

from hfscratch.errors import ConfigError
from hfscratch.training import SpikeDetector, TrainConfig, TrainingDivergedError, plan_batches
from hfscratch.training.backend import TrainingBackend
from hfscratch.training.data import IGNORE_INDEX, make_labels, predicted_token_count
from hfscratch.training.metrics import bits_per_byte_from_nll, flops_per_token, matmul_parameter_count
from hfscratch.training.optim import build_optimizer, build_scheduler, lr_multiplier, parameter_groups
from hfscratch.training.step import TrainStep


def _lrs(schedule: str, steps=100, warmup=10, **kw):
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, 1.0, 0.1)
    sched = build_scheduler(opt, max_steps=steps, warmup_steps=warmup, schedule=schedule, min_lr_ratio=0.1, **kw)
    values = []
    for _ in range(steps + 1):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return values


def test_cosine_schedule_values():
    lrs = _lrs("cosine")
    assert lrs[0] == pytest.approx(0.1)  # first update: 1/warmup of the peak, never 0
    assert lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)  # warmup end = peak
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5)  # middle of the decay: halfway between peak and floor
    assert lrs[100] == pytest.approx(0.1)  # end: min_lr_ratio x peak
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_wsd_schedule_values():
    lrs = _lrs("wsd", wsd_decay_ratio=0.2)
    assert lrs[10] == pytest.approx(1.0) and lrs[79] == pytest.approx(1.0)  # stable phase
    assert lrs[90] == pytest.approx(1.0 - 0.9 * 0.5)  # linear decay over the last 20 steps
    assert lrs[100] == pytest.approx(0.1)
    assert lr_multiplier(5, max_steps=100, warmup_steps=10, schedule="constant", min_lr_ratio=0.1) == pytest.approx(0.6)


def test_weight_decay_on_matrices_only(tiny_tokenizer):
    from hfscratch import HfscratchConfig, HfscratchForCausalLM
    from tests.helpers import tiny_config

    for config in (tiny_config(tiny_tokenizer), HfscratchConfig.gpt2_style(**tiny_config(tiny_tokenizer).to_diff_dict())):
        model = HfscratchForCausalLM(config)
        decay, no_decay = parameter_groups(model, 0.1)
        names = {id(p): n for n, p in model.named_parameters()}
        assert all(p.ndim == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
        assert no_decay["weight_decay"] == 0.0
        assert {names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"]} <= {"weight", "bias"}
        assert all("norm" in names[id(p)] or names[id(p)].endswith("bias") for p in no_decay["params"])
        assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_spike_detector_nan_spike_and_stop():
    det = SpikeDetector(zscore=4.0, warmup_steps=10, max_consecutive_skips=3)
    for i in range(30):
        assert not det.check(3.0 + 0.01 * (i % 5), 1.0 + 0.01 * (i % 3), i).skip
    assert det.check(float("nan"), 1.0, 31).skip
    assert not det.check(3.01, 1.0, 32).skip  # a good step resets the run of skips
    verdict = det.check(9.0, 1.0, 33)
    assert verdict.skip and "loss spike" in verdict.reason
    assert det.check(3.0, 50.0, 34).reason.startswith("gradient-norm spike")
    with pytest.raises(TrainingDivergedError, match="3 consecutive steps skipped.*non-finite gradient norm"):
        det.check(3.0, float("inf"), 35)
    restored = SpikeDetector(zscore=4.0, warmup_steps=10, max_consecutive_skips=3)
    restored.load_state_dict(det.state_dict())
    assert restored.state_dict() == det.state_dict()


def test_batch_plan_arithmetic_and_errors():
    args = TrainConfig(max_tokens=10_000, per_device_train_batch_size=4, global_batch_size=16, warmup_steps=1)
    plan = plan_batches(args, world_size=2, block_size=64)
    assert (plan.gradient_accumulation_steps, plan.tokens_per_step, plan.max_steps) == (2, 1024, 10)
    with pytest.raises(ConfigError, match="not divisible by per_device_train_batch_size 4 x 3 processes"):
        plan_batches(args, world_size=3, block_size=64)
    with pytest.raises(ConfigError, match="drop one"):
        plan_batches(TrainConfig(max_steps=5, per_device_train_batch_size=4, global_batch_size=16, gradient_accumulation_steps=3, warmup_steps=1), 1, 64)
    with pytest.raises(ConfigError, match="warmup_steps"):
        plan_batches(TrainConfig(max_steps=5, warmup_steps=5), 1, 64)
    with pytest.raises(ConfigError, match="not both"):
        TrainConfig(max_steps=5, max_tokens=100)
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")


def test_flops_per_token_counts_every_matmul(tiny_tokenizer):
    from hfscratch import HfscratchForCausalLM
    from tests.helpers import tiny_config

    config = tiny_config(tiny_tokenizer, tie_word_embeddings=False)
    model = HfscratchForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))  # includes lm_head
    assert matmul_parameter_count(config) == linear
    assert flops_per_token(config, 128) == 6 * linear + 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * 128
    assert bits_per_byte_from_nll(math.log(2) * 100, 100) == pytest.approx(1.0)


def test_labels_skip_document_starts_and_padding():
    ids = torch.tensor([[1, 5, 6, 2, 1, 7, 2, 0]])
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    labels = make_labels(ids, pos, pad_token_id=0)
    assert labels.tolist() == [[IGNORE_INDEX, 5, 6, 2, IGNORE_INDEX, 7, 2, IGNORE_INDEX]]
    assert predicted_token_count(labels) == 5


class _EngineThatStepsItself(TrainingBackend):
    """Updates inside its own step, as DeepSpeed does: the verdict comes after the fact."""

    name = "Engine"

    def __init__(self, accelerator, grad_norm: float, applied: bool):
        super().__init__(accelerator, None)
        self.grad_norm, self.applied = grad_norm, applied
        self.model = torch.nn.Embedding(16, 16)
        self.model.forward = lambda input_ids, position_ids, use_cache: SimpleNamespace(logits=torch.nn.functional.embedding(input_ids, self.model.weight))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(self.model.parameters(), lr=0.5), lambda step: 1.0 / (step + 1))

    def no_sync(self, last: bool):
        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()

    def step(self, approve):
        approve(self.grad_norm)
        return self.grad_norm, self.applied


@pytest.mark.parametrize("grad_norm,applied,skip,reason", [
    (1.0, True, False, ""),
    (1.0, False, True, "Engine skipped the update (non-finite gradients, norm 1.0)"),
    (float("inf"), True, False, ""),  # judged bad, but the engine already applied it: logged, not counted as skipped
])
def test_train_step_reconciles_the_verdict_with_what_the_engine_did(grad_norm, applied, skip, reason, capsys):
    accelerator = SimpleNamespace(device=torch.device("cpu"), num_processes=1, process_index=0, is_main_process=True, autocast=contextlib.nullcontext)
    backend = _EngineThatStepsItself(accelerator, grad_norm, applied)
    detector = SpikeDetector(zscore=0.0, warmup_steps=0, max_consecutive_skips=5)
    train_step = TrainStep(accelerator, backend, detector, accumulation_steps=2, pad_token_id=None, z_loss=0.0)
    ids = torch.arange(16).reshape(2, 8)
    batches = iter([{"input_ids": ids.clone(), "position_ids": torch.arange(8).expand(2, 8).clone()} for _ in range(2)])
    loss, norm, verdict, lr = train_step(batches, step=3)
    assert (verdict.skip, verdict.reason) == (skip, reason)
    assert lr == 0.5 and backend.scheduler.get_last_lr() == [0.25]  # the lr the step used, then one schedule step
    assert math.isfinite(loss) and norm == grad_norm and backend.model.weight.grad is not None
    assert ("step 3: non-finite gradient norm (inf); Engine had already applied this update" in capsys.readouterr().out) == (not math.isfinite(grad_norm))
