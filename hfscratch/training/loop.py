"""The pretraining loop on Accelerate primitives.

The per-batch math lives in `step.py` on a `backend.py` engine; between steps `hooks.py` validates, samples,
checkpoints and pushes; `artifacts.py` writes the final folder. Exact resume: the data order depends on
(seed, epoch) only (`data.py`) and checkpoints store the sequences consumed.
Accelerate's `accumulate()` and prepared dataloaders are not used: token weighting needs the global token count
up front, and exact resume needs the data position in sequences, not batches.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..data.config import check_block_size
from ..errors import ConfigError, DataError
from . import artifacts, hooks
from . import checkpoint as ckpt
from .artifacts import prepare_output_dir
from .backend import create_accelerator, make_backend, print_main, resolve_optimizer
from .config import PretrainConfig, flat_config, plan_batches
from .data import PackedBlocks, StepBatches, TrainingData, load_training_data
from .fp8 import convert_to_fp8, resolve_fp8_emulate
from .metrics import flops_per_token, peak_flops_per_device
from .model_factory import build_model, max_positions
from .stability import SpikeDetector
from .step import StepOutcome, TrainStep


@dataclass
class PretrainResult:
    output_dir: Path
    final_dir: Path | None
    metrics: dict[str, float]
    loss_history: list[tuple[int, float | None]]
    validation_history: list[tuple[int, float]]
    sample: str
    skipped_steps: list[tuple[int, str]]
    is_main_process: bool = True


class Pretrainer:
    def __init__(self, config: PretrainConfig, data: TrainingData | None = None):
        self.output_dir = Path(config.train.resolve_output_dir())
        self.accelerator, self.mixed_precision = create_accelerator(config.train, self.output_dir)
        acc = self.accelerator
        # The config as run: `optimizer: auto` resolved for this engine, so logs, checkpoints and the card name it.
        self.config = config = replace(config, train=resolve_optimizer(config.train, acc.distributed_type))
        self.model_args, self.data_args, self.args = model_args, data_args, args = config.model, config.data, config.train
        self.backend = make_backend(acc, args)
        if self.mixed_precision == "fp8":
            resolve_fp8_emulate(args.fp8_emulate)  # fail before data preparation, which can take long
        prepare_output_dir(self.output_dir, args, acc.is_main_process)
        acc.wait_for_everyone()
        set_seed(args.seed)

        check_block_size(data_args.block_size, max_positions(model_args))  # before data preparation, which takes long
        self.data = data if data is not None else load_training_data(data_args, acc)
        self.tokenizer = self.data.tokenizer
        self.train_blocks, self.val_blocks = PackedBlocks(self.data.train), PackedBlocks(self.data.validation)
        self.block_size = data_args.block_size
        for split, blocks in (("train", self.train_blocks), ("validation", self.val_blocks)):
            if blocks.block_size != self.block_size:
                raise DataError(f"the {split} blocks hold {blocks.block_size} tokens but block_size is {self.block_size}; "
                                f"set data.block_size {blocks.block_size} or prepare the data again")

        set_seed(args.seed)  # the same initial weights whatever data preparation consumed
        with self.backend.model_init_context():
            model = build_model(model_args, self.tokenizer)
        max_id = max(self.train_blocks.max_token_id(), self.val_blocks.max_token_id())
        if max_id >= model.config.vocab_size or max_id >= len(self.tokenizer):
            raise ConfigError(f"the data holds token id {max_id} but the tokenizer has {len(self.tokenizer)} tokens "
                              f"and the model {model.config.vocab_size}; the data was tokenized with another "
                              "tokenizer: re-prepare it or pass the matching tokenizer_path")
        model = self.backend.shard_model(model, self.output_dir / ".tp-initial-weights")  # before anything modifies it
        if self.mixed_precision == "fp8":
            convert_to_fp8(model, args.fp8_emulate)
        if args.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.plan = plan_batches(args, self.backend.data_world, self.block_size, len(self.train_blocks))
        self.model, self.optimizer, self.scheduler = self.backend.prepare(model, self.plan)
        if args.torch_compile:
            acc.unwrap_model(self.model).compile()  # in place: state_dict keys and saving are unchanged

        self.detector = SpikeDetector(args.spike_zscore, args.spike_warmup_steps, args.max_consecutive_skips)
        self.train_step = TrainStep(acc, self.backend, self.detector, pad_token_id=self.tokenizer.pad_token_id,
                                    accumulation_steps=self.plan.gradient_accumulation_steps, z_loss=args.z_loss)
        self.validation = hooks.Validation(acc, self.val_blocks, self.tokenizer, self.plan.per_device_train_batch_size, args.eval_max_batches,
                                           self.backend.data_world, self.backend.data_rank, self.backend.replicas)
        self.step = self.sequences_consumed = self.tokens_seen = 0
        self.train_time = 0.0
        self.loss_history: list[tuple[int, float | None]] = []
        self.validation_history: list[tuple[int, float]] = []
        self.skipped_steps: list[tuple[int, str]] = []
        self.last_eval: dict[str, float] = {}
        self.last_sample = ""
        self.flops_per_token = flops_per_token(self.unwrapped.config, self.block_size)
        self.peak_flops, self.peak_source = peak_flops_per_device(acc.device, self.mixed_precision, args.peak_flops)

    @property
    def unwrapped(self):
        return self.backend.unwrapped_model()

    def trainer_state(self) -> dict:
        return {
            "step": self.step, "sequences_consumed": self.sequences_consumed, "tokens_seen": self.tokens_seen,
            "train_time_s": self.train_time, "block_size": self.block_size, "seed": self.args.seed,
            "max_steps": self.plan.max_steps, "sequences_per_step": self.plan.sequences_per_step,
            "loss_history": self.loss_history, "validation_history": self.validation_history,
            "skipped_steps": self.skipped_steps, "stability": self.detector.state_dict(), "last_eval": self.last_eval,
            "tp_size": self.args.tp_size, "optimizer": self.args.optimizer,
        }

    def restore(self, path: Path) -> None:
        state = ckpt.load_checkpoint(self.backend, path)
        if state.get("block_size") != self.block_size or state.get("seed") != self.args.seed:
            raise ConfigError(f"checkpoint {path} was trained with block_size {state.get('block_size')} and "
                              f"seed {state.get('seed')}, this run uses {self.block_size} and {self.args.seed}; "
                              "resume with the same data and seed")
        self.step, self.sequences_consumed, self.tokens_seen = state["step"], state["sequences_consumed"], state["tokens_seen"]
        self.train_time = state.get("train_time_s", 0.0)
        self.loss_history = [tuple(x) for x in state.get("loss_history", [])]
        self.validation_history = [tuple(x) for x in state.get("validation_history", [])]
        self.skipped_steps = [tuple(x) for x in state.get("skipped_steps", [])]
        self.last_eval = state.get("last_eval", {})
        self.detector.load_state_dict(state["stability"])
        print_main(self.accelerator, f"resumed from {path} at step {self.step} ({self.tokens_seen:,} tokens seen)")

    # Hooks, overridable one by one (the benchmark overrides `_run_eval`).
    def evaluate(self) -> dict[str, float]:
        return self.validation.evaluate(self.model)

    def sample(self) -> str:
        args = self.args
        return hooks.sample_continuation(self.unwrapped, self.tokenizer, self.accelerator, args.sample_prompt, args.sample_max_new_tokens, args.seed)

    def _run_eval(self, pbar) -> None:
        hooks.run_validation(self, pbar)

    def _run_harness(self, pbar) -> None:
        hooks.run_lm_eval(self, pbar)

    def _save(self, pbar) -> Path:
        return hooks.save_periodic_checkpoint(self, pbar)

    def _train_step(self, batches) -> StepOutcome:
        return self.train_step(batches, self.step + 1)

    def final_metrics(self) -> dict[str, float]:
        return artifacts.final_metrics(self)

    def save_final(self) -> Path | None:
        return artifacts.save_final(self)

    def train(self) -> PretrainResult:
        acc, args, plan = self.accelerator, self.args, self.plan
        if args.resume_from_checkpoint:
            self.restore(ckpt.resolve_checkpoint(args.resume_from_checkpoint, self.output_dir))
        artifacts.write_run_config(self)
        if args.trackers():
            acc.init_trackers(args.run_name, config={k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in flat_config(self.config).items() if v is not None})
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in self.unwrapped.parameters())  # ZeRO-3 leaves empty placeholders
        micro, accum = plan.per_device_train_batch_size, plan.gradient_accumulation_steps
        print_main(acc, f"model: {n_params / 1e6:.2f}M parameters | {plan.max_steps} steps x {plan.tokens_per_step:,} "
                   f"tokens (micro {micro} x accum {accum} x {plan.world_size} proc x block {self.block_size}) "
                   f"= {plan.max_steps * plan.tokens_per_step:,} tokens | precision {self.mixed_precision} | "
                   f"{acc.device.type} | MFU peak: {self.peak_source}")
        step_batches = StepBatches(self.train_blocks, seed=args.seed, start_sequence=self.sequences_consumed,
                                   num_steps=max(0, plan.max_steps - self.step), micro=micro, accum=accum,
                                   world=self.backend.data_world, rank=self.backend.data_rank)
        loader = torch.utils.data.DataLoader(step_batches, batch_size=None, shuffle=False, persistent_workers=False,
                                             num_workers=args.dataloader_num_workers,
                                             pin_memory=acc.device.type == "cuda")
        batches = iter(loader)
        pbar = tqdm(total=plan.max_steps, initial=self.step, desc="pretrain", unit="step", dynamic_ncols=True, disable=not acc.is_main_process, file=sys.stdout)
        window = hooks.TrainLogWindow()
        final_dir = None
        self.model.train()
        try:
            while self.step < plan.max_steps:
                start = time.perf_counter()
                loss, grad_norm, verdict, lr = self._train_step(batches)
                elapsed = time.perf_counter() - start
                self.step += 1
                self.sequences_consumed += plan.sequences_per_step
                self.tokens_seen += plan.tokens_per_step
                self.train_time += elapsed
                window.add(plan.tokens_per_step, elapsed)
                self.loss_history.append((self.step, loss if math.isfinite(loss) else None))
                if verdict.skip:
                    self.skipped_steps.append((self.step, verdict.reason))
                    acc.log({"train/skipped_steps": len(self.skipped_steps)}, step=self.step)
                    hooks.write_message(acc, pbar, f"step {self.step}: skipped the update: {verdict.reason}")
                else:
                    window.losses.append(loss)
                pbar.update(1)
                if self.step % args.logging_steps == 0 or self.step == plan.max_steps:
                    hooks.log_train_metrics(self, pbar, window, lr, grad_norm)
                    window = hooks.TrainLogWindow()
                if args.eval_steps and self.step % args.eval_steps == 0 and self.step < plan.max_steps:
                    self._run_eval(pbar)
                if args.eval_harness_tasks and args.eval_harness_steps and self.step % args.eval_harness_steps == 0:
                    self._run_harness(pbar)
                if args.save_steps and self.step % args.save_steps == 0 and self.step < plan.max_steps:
                    self._save(pbar)
            if not self.validation_history or self.validation_history[-1][0] != self.step:
                self._run_eval(pbar)
            elif not self.last_sample:
                self.last_sample = self.sample()
            self._save(pbar)
            final_dir = self.save_final()
        finally:
            pbar.close()
            acc.end_training()
        return PretrainResult(self.output_dir, final_dir, self.final_metrics(), self.loss_history,
                              self.validation_history, self.last_sample, self.skipped_steps, acc.is_main_process)


def pretrain(config: PretrainConfig, data: TrainingData | None = None) -> PretrainResult:
    """Run one pretraining job end to end; returns where things went and the final metrics."""
    return Pretrainer(config, data=data).train()
