"""What SFT, DPO, GRPO and the reward model share: loading the checkpoint and tokenizer, checks, result files."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed
from trl.trainer.reward_trainer import suppress_seqcls_warning

from ..atomic import replace_folder_atomically, save_figure_atomically, write_file_atomically
from ..devices import resolve_dtype
from ..errors import CheckpointError, ConfigError, DataError
from ..tokenizer import CHAT_TEMPLATE, ensure_chat_template
from . import lora
from .config import AlignmentDataConfig, AlignmentModelConfig
from .datasets import SYNTHETIC, load_stage_dataset
from .lora import check_checkpoint_path
from .merge import merge_adapter

# TRL 1.16 reads `model.is_gradient_checkpointing` before generating, which transformers 5.24 deprecates in favour of
# `is_activation_checkpointing`: one FutureWarning per run that no hfscratch user can act on (the fix is TRL's).
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
# Likewise TRL's trainers switch checkpointing with `gradient_checkpointing_enable` / `_disable`, deprecated in
# transformers 5.24 for `activation_checkpointing_*`.
warnings.filterwarnings("ignore", message="`gradient_checkpointing_(enable|disable)` is deprecated", category=FutureWarning)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def check_chat_template(tokenizer, fix: bool) -> bool:
    """Make sure the tokenizer has a chat template with {% generation %} markers; returns True if one was added."""
    template = getattr(tokenizer, "chat_template", None)
    if template and "{% generation %}" in template.replace("{%- generation %}", "{% generation %}"):
        return False
    if not fix:
        problem = "has no chat template" if not template else "has a chat template without {% generation %} markers"
        raise ConfigError(f"the tokenizer {problem}, so the assistant-only loss cannot find the answers; "
                          "pass --use_hfscratch_chat_template true to use the hfscratch template")
    before = len(tokenizer)
    tokenizer.chat_template = None
    ensure_chat_template(tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    return len(tokenizer) != before


def saved_architectures(name: str) -> list[str]:
    """The `architectures` a local checkpoint folder's config.json names (empty for Hub ids and adapters)."""
    config = Path(name).expanduser() / "config.json"
    return json.loads(config.read_text()).get("architectures") or [] if config.is_file() else []


def is_sequence_classifier(name: str) -> bool:
    return any(arch.endswith("ForSequenceClassification") for arch in saved_architectures(name))


def load_reward_model(name: str, policy_tokenizer, what: str = "reward model", trust_remote_code: bool = False):
    """A frozen one-label sequence classifier (`hfscratch reward` output, full or LoRA) for scoring completions; it
    must read the policy's tokens, since TRL hands it the policy's text re-tokenized with the reward model's tokenizer
    and a different vocabulary would score something else than what the reward model learned."""
    check_checkpoint_path(name, what)
    if (architectures := saved_architectures(name)) and not is_sequence_classifier(name):
        raise CheckpointError(f"{name} is a {architectures[0]}, not a reward model (a sequence classifier with "
                              f"one label); train one with `hfscratch reward --model_name_or_path {name}`")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        with suppress_seqcls_warning():
            model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"could not load the {what} {name}: {str(err).splitlines()[0]}") from None
    if tokenizer.get_vocab() != policy_tokenizer.get_vocab():
        raise CheckpointError(f"the {what} {name} uses a different tokenizer from the policy's; train it from the policy's "
                              "starting checkpoint (`hfscratch reward --model_name_or_path <the SFT model>`)")
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval().requires_grad_(False)


def load_model_and_tokenizer(model_args: AlignmentModelConfig, training: bool = True, trust_remote_code: bool = False,
                             reward: bool = False):
    """The causal LM (``reward``: a one-label sequence classifier on its backbone) and its tokenizer, checked for a
    usable chat template; embeddings resized if tokens were added. `trust_remote_code` comes from the TRL config (its
    field of that name), so YAML has one key for it."""
    check_checkpoint_path(model_args.model_name_or_path)
    if not reward and is_sequence_classifier(model_args.model_name_or_path):
        raise CheckpointError(f"{model_args.model_name_or_path} is a reward model (a sequence classifier), not a causal LM; "
                              "start from the SFT checkpoint and pass the reward model as --reward_model_name_or_path")
    source = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise CheckpointError(f"no tokenizer in {source} ({str(err).splitlines()[0]}); pass --tokenizer_name_or_path") from None
    if (tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token) and not model_args.use_hfscratch_chat_template:
        raise ConfigError(f"the tokenizer in {source} has no pad token distinct from eos (the eos label would be masked); "
                          "pass --use_hfscratch_chat_template true to add one")
    added = check_chat_template(tokenizer, model_args.use_hfscratch_chat_template)
    kwargs = {"dtype": resolve_dtype(model_args.dtype), "trust_remote_code": trust_remote_code,
              **({"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}),
              **({"quantization_config": lora.quantization_config()} if model_args.load_in_4bit else {})}
    # A reward model starts from a causal LM: its new `score` head is missing from the checkpoint and an untied lm_head
    # is left over, both by design, so TRL's scoped override keeps transformers from reporting them as load problems.
    auto_class, quiet = ((AutoModelForSequenceClassification, suppress_seqcls_warning) if reward
                         else (AutoModelForCausalLM, contextlib.nullcontext))
    try:
        with quiet():
            model = auto_class.from_pretrained(model_args.model_name_or_path, **kwargs, **({"num_labels": 1} if reward else {}))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"could not load {model_args.model_name_or_path}: {str(err).splitlines()[0]}") from None
    if added or len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if (gen := getattr(model, "generation_config", None)) is not None:  # a reward model has none
        gen.pad_token_id, gen.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    if model_args.adapter_name_or_path:
        check_checkpoint_path(model_args.adapter_name_or_path, "adapter")
        lora.check_base_fingerprint(model_args.adapter_name_or_path, model, model_args.model_name_or_path)
        try:
            model = PeftModel.from_pretrained(model, model_args.adapter_name_or_path, is_trainable=training)
        except RuntimeError as err:  # size mismatch: the adapter belongs to another architecture
            raise CheckpointError(f"adapter {model_args.adapter_name_or_path} does not fit {model_args.model_name_or_path} "
                                  f"({str(err).splitlines()[0][:200]}); pass the base model it was trained on") from None
    return model, tokenizer


def peft_config_for(model, model_args: AlignmentModelConfig, task_type: str = "CAUSAL_LM"):
    """The LoRA config of a use_peft run (None otherwise); ``SEQ_CLS`` for a reward model."""
    if model_args.load_in_4bit and not model_args.use_peft:
        raise ConfigError("load_in_4bit (QLoRA) trains adapters only; also set use_peft true")
    if not model_args.use_peft or model_args.adapter_name_or_path:
        return None  # full training, or training continues on the loaded adapter
    config = lora.build_lora_config(model, model_args.lora_target_modules, model_args.lora_r, model_args.lora_alpha,
                                    model_args.lora_dropout, model_args.lora_modules_to_save)
    if task_type == "SEQ_CLS":  # the `score` head starts random: a low-rank update of it would learn nothing useful,
        # so it trains in full and is saved with the adapter
        config = dataclasses.replace(config, task_type=task_type, modules_to_save=[*(config.modules_to_save or []), "score"])
    return config


def parse_column_map(text: str | None) -> dict | None:
    if not text:
        return None
    with contextlib.suppress(json.JSONDecodeError):
        if isinstance(mapping := json.loads(text), dict):
            return mapping
    raise ConfigError(f'dataset_column_map must be a JSON object like {{"query": "question"}}, got {text!r}')


def _split_off_heldout(stage: str, train, script_args: AlignmentDataConfig):
    """(training rows, held-out rows) for eval_from_train: the held-out rows are the last eval_samples, so the
    training window (skip_train_samples, max_train_samples) never reaches them."""
    if stage == "sft":  # SFT measures exact match on verifiable answers, which its training rows (chats) lack
        raise ConfigError("eval_from_train works for pairs and prompts (dpo, reward, grpo, rlhf), not sft; name held-out data with eval_dataset_name")
    if script_args.eval_dataset_name or script_args.dataset_test_split:
        raise ConfigError("eval_from_train takes the held-out rows from the training data; drop eval_dataset_name and dataset_test_split")
    if (n := script_args.eval_samples) >= len(train):
        raise DataError(f"eval_from_train holds out {n} rows, but {script_args.dataset_name} has only {len(train)}; lower eval_samples")
    return train.select(range(len(train) - n)), train.select(range(len(train) - n, len(train)))


def _training_window(train, script_args: AlignmentDataConfig):
    """The training rows from skip_train_samples on, at most max_train_samples of them."""
    start = script_args.skip_train_samples
    if start >= len(train):
        raise DataError(f"skip_train_samples {start} skips all {len(train)} training rows of {script_args.dataset_name}; lower it")
    end = len(train) if script_args.max_train_samples is None else min(len(train), start + script_args.max_train_samples)
    return train.select(range(start, end))


def start_stage(stage: str, model_args: AlignmentModelConfig, script_args: AlignmentDataConfig, training_args, model=None, tokenizer=None):
    """Seed; the model and tokenizer (unless given); training rows in `stage` format and held-out rows (``eval`` rows:
    prompt + answer; ``dpo`` and ``reward`` rows: pairs) or None."""
    set_seed(training_args.seed)  # also before loading: a reward model's new head is drawn at random
    if training_args.dataloader_pin_memory and not torch.accelerator.is_available():
        # TRL's default; without an accelerator pinning does nothing and torch warns on every run
        training_args.dataloader_pin_memory = False
    if model is None:
        model, tokenizer = load_model_and_tokenizer(model_args, trust_remote_code=training_args.trust_remote_code,
                                                    reward=stage == "reward")
    pairs = stage in ("dpo", "reward")  # a reward model learns from DPO's pairs
    data_stage, column_map = "dpo" if pairs else stage, parse_column_map(script_args.dataset_column_map)
    synthetic, styles = script_args.synthetic, script_args.synthetic_styles()
    carve = script_args.eval_from_train and script_args.eval_samples > 0
    window = carve or script_args.skip_train_samples > 0  # then the cap applies after carving and skipping
    # GRPO rows carved for held-out use are read in the held-out format (with the reference answer's messages)
    train = load_stage_dataset("eval" if carve and stage == "grpo" else data_stage, script_args.dataset_name,
                               script_args.dataset_train_split, script_args.dataset_config, column_map,
                               None if window else script_args.max_train_samples, script_args.synthetic_train_size,
                               synthetic, styles)
    eval_name, eval_stage = script_args.eval_dataset_name or script_args.dataset_name, "dpo" if pairs else "eval"
    held = None  # also when no held-out data is named: never measure on training rows
    if carve:
        train, held = _split_off_heldout(stage, train, script_args)
        if "messages" in train.column_names and stage == "grpo":  # read as held-out rows; GRPO trains on prompts
            train = train.remove_columns("messages")
    elif script_args.eval_samples > 0 and eval_name == SYNTHETIC:
        held = load_stage_dataset(eval_stage, SYNTHETIC, "heldout", None, None, script_args.eval_samples,
                                  script_args.eval_samples, synthetic, styles)
    elif script_args.eval_samples > 0 and (script_args.dataset_test_split or script_args.eval_dataset_name):
        held = load_stage_dataset(eval_stage, eval_name, script_args.dataset_test_split or "test", script_args.dataset_config,
                                  column_map, script_args.eval_samples)
    if window:
        train = _training_window(train, script_args)
    if pairs:  # the trainers take prompt/chosen/rejected only; kind and answer are for held-out metrics
        train = train.remove_columns([c for c in ("pair_kind", "answer") if c in train.column_names])
    if held is not None and stage == "sft" and "answer" not in held.column_names:
        raise DataError("held-out metrics need rows with a verifiable answer; set eval_dataset_name to a GSM8K-style file")
    return model, tokenizer, train, held


def write_alignment_results(output_dir: str | Path, stage: str, before: dict | None, after: dict | None, extra: dict | None = None) -> dict:
    """`<output_dir>/alignment_results.json`, and a before/after bar chart PNG and table when both were measured."""
    output_dir = Path(output_dir)
    result = {"stage": stage, "before": before, "after": after, **(extra or {})}
    write_file_atomically(output_dir / "alignment_results.json", json.dumps(result, indent=2, default=str) + "\n")
    if before and after:
        from matplotlib.figure import Figure  # lazily: slow to import; a bare Figure needs no pyplot or GUI backend

        keys = [k for k, v in before.items() if isinstance(v, (int, float)) and k != "n" and k in after]
        fig = Figure(figsize=(1.6 * len(keys) + 2, 3.5))
        ax = fig.subplots()
        xs = range(len(keys))
        ax.bar([x - 0.2 for x in xs], [before[k] for k in keys], width=0.4, label="before")
        ax.bar([x + 0.2 for x in xs], [after[k] for k in keys], width=0.4, label="after")
        ax.set_xticks(list(xs), keys, rotation=20)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(f"{stage}: held-out metrics before and after")
        ax.legend()
        fig.tight_layout()
        save_figure_atomically(fig, output_dir / f"{stage}_before_after.png", dpi=100)
        print(f"\n{stage} held-out metrics (n={after.get('n')}):")
        width = max([len("metric"), *map(len, keys)]) + 2
        print(f"  {'metric':<{width}}{'before':>10}{'after':>10}{'change':>10}")
        for key in keys:
            print(f"  {key:<{width}}{before[key]:>10.4f}{after[key]:>10.4f}{after[key] - before[key]:>+10.4f}")
    return result


def train_and_finish(trainer_class, stage: str, model, tokenizer, train, measure, model_args: AlignmentModelConfig,
                     training_args, extra: dict, **trainer_kwargs) -> dict | None:
    """Measure, train, save `<output_dir>/final` atomically (adapter or full model + tokenizer), merge if asked,
    measure again and write the results."""
    before = measure(model) if measure and is_main_process() else None
    trainer = trainer_class(model=model, args=training_args, train_dataset=train, processing_class=tokenizer,
                            **trainer_kwargs)
    trainer.train()
    # transformers' Trainer sets `config.use_cache = args.use_cache` (False) on the model it trains; the saved model
    # is for inference, where the KV cache is the default (and `from_pretrained` would carry False on to every user).
    model.config.use_cache = True
    final, accelerator = Path(training_args.output_dir) / "final", trainer.accelerator
    tmp = final.with_name("final.tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # every rank takes part (sharded states); only the main one writes
    result = None
    if accelerator.is_main_process:
        # Without keep_fp32_wrapper=False the unwrapped forward keeps Accelerate's bf16 autocast, so "after" would be
        # measured in bf16 while "before" ran in fp32.
        model = accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
        tokenizer.save_pretrained(tmp)
        if is_adapter := isinstance(model, PeftModel):
            lora.write_base_fingerprint(tmp, model, model_args.model_name_or_path)
        replace_folder_atomically(lambda out: tmp.rename(out), final)
        merged = merge_adapter(final, final.parent / "merged", base_model=model_args.model_name_or_path) if is_adapter and model_args.merge_lora else None
        after = measure(model) if measure else None
        result = write_alignment_results(training_args.output_dir, stage, before, after, {
            "final": str(final), "merged": str(merged) if merged else None, "adapter": is_adapter,
            "train_loss": [h.get("loss") for h in trainer.state.log_history if "loss" in h],
            "world_size": accelerator.num_processes, **extra})
        print(f"saved {'adapter' if is_adapter else 'model'} to {final}" + (f"; merged model in {merged}" if merged else ""))
    accelerator.wait_for_everyone()
    return result
