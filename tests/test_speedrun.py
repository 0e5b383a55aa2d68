"""`hfscratch speedrun`: reuse and resume, the report card, the one-line errors and the estimate on stand-in stage
folders (in-process, fast), and the whole chain for real with a tiny seeded config (each stage a few steps, run as a
subprocess of its own command, as the speedrun does)."""

import json
import math
import re
import shutil

import pytest
import torch
from safetensors.torch import save_file
from torch.utils.tensorboard import SummaryWriter

from hfscratch import speedrun
from hfscratch.alignment.config import RewardStageConfig, RLHFStageConfig, SFTStageConfig
from hfscratch.cli import OneLineErrorParser, main
from hfscratch.data.config import DataConfig
from hfscratch.evaluation import cli as eval_cli
from hfscratch.options import parse_config
from hfscratch.speedrun import report as speedrun_report
from hfscratch.training.config import PretrainConfig

DATA = {"pack": {"block_size": 32}, "tokenizer": {"vocab_size": 300, "bytes_per_token": 3.0},
        "splits": {"train": {"tokens": 1000, "blocks": 30}}}
RESULTS = {
    "sft": {"before": {"exact_match": 0.05, "format_rate": 0.2, "eos_rate": 0.5, "n": 10},
            "after": {"exact_match": 0.4, "format_rate": 0.9, "eos_rate": 1.0, "n": 10}, "train_loss": [2.0, 1.0]},
    "reward": {"before": {"accuracy": 0.5, "length_baseline_accuracy": 0.45, "shorter_baseline_accuracy": 0.55, "margin": 0.0, "n": 10},
               "after": {"accuracy": 0.8, "length_baseline_accuracy": 0.45, "shorter_baseline_accuracy": 0.55, "margin": 1.2, "n": 10},
               "train_loss": [0.7, 0.5]},
    "rlhf": {"before": {"learned_reward": 0.1, "exact_match": 0.4, "completion_tokens": 40.0, "mean_reward": 0.5, "n": 10},
             "after": {"learned_reward": 0.6, "exact_match": 0.45, "completion_tokens": 38.0, "mean_reward": 0.6, "n": 10},
             "train_loss": [0.0, 0.01]},
}


def _model_folder(folder, marker: float):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["HfscratchForCausalLM"]}))
    (folder / "tokenizer.json").write_text("{}")
    save_file({"weight": torch.full((2, 2), marker)}, str(folder / "model.safetensors"))


def make_stage(root, stage: str) -> None:
    """A stand-in for a finished stage's folder, with the files the report reads."""
    if stage == "data":
        (root / "data" / "tokenizer").mkdir(parents=True)
        (root / "data" / "packed").mkdir()
        (root / "data" / "manifest.json").write_text(json.dumps(DATA))
        (root / "data" / "tokenizer" / "tokenizer.json").write_text("{}")
        (root / "data" / "packed" / "dataset_dict.json").write_text('{"splits": ["train", "validation"]}')
    elif stage == "eval":
        (root / "eval").mkdir(parents=True)
        (root / "eval" / "results.json").write_text(json.dumps({
            "results": {"gsm8k_chat_local": {"exact_match,strict-match": 0.02, "exact_match,flexible-extract": 0.03}},
            "n-samples": {"gsm8k_chat_local": {"effective": 20}}}))
        (root / "rlhf" / "final" / "README.md").write_text("---\nmodel-index:\n- name: speedrun\n---\n# card\n")
    else:
        final = root / stage / "final"
        _model_folder(final, float(speedrun.STAGES.index(stage)))
        if stage == "pretrain":
            history = [[step, 7.0 / step] for step in range(1, 11)]
            (final / "training_metrics.json").write_text(json.dumps({
                "metrics": {"val_loss": 0.9, "val_bits_per_byte": 0.43, "val_perplexity": 2.46},
                "loss_history": history, "validation_history": [[5, 1.2], [10, 0.9]]}))
        else:
            (root / stage / "alignment_results.json").write_text(json.dumps({"stage": stage, **RESULTS[stage]}))
        if stage == "rlhf":  # the reward curve comes from the trainer's TensorBoard scalars
            writer = SummaryWriter(str(root / stage / "runs"))
            for step in range(1, 5):
                writer.add_scalar("train/reward", 0.5 + 0.05 * step, step)
                writer.add_scalar("train/kl", 0.01 * step, step)
            writer.close()


@pytest.fixture
def chain(tmp_path):
    """A finished speedrun: every stage folder plus the state file (times, commands)."""
    root = tmp_path / "speedrun"
    root.mkdir()
    for stage in speedrun.STAGES:
        make_stage(root, stage)
    state = {"stages": {stage: {"status": "done", "seconds": 10.0 * (i + 1), "estimate_s": 12.0,
                                "command": ["hfscratch", stage, "..."]} for i, stage in enumerate(speedrun.STAGES)}}
    (root / speedrun.STATE_FILE).write_text(json.dumps(state))
    return root


def _fingerprint(root):
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in root.rglob("*") if p.is_file() and "/final/" in str(p) and p.name != "README.md"}


def _fake_stages(monkeypatch, ran: list):
    """run_stage without the subprocess: record the stage and leave a finished folder as the real one would."""
    def fake(config, stage, number, argv):
        ran.append(stage)
        make_stage(config.root, stage)
        return 1.0

    monkeypatch.setattr(speedrun, "run_stage", fake)


def test_complete_chain_is_reused_and_reported(chain, capsys):
    before = _fingerprint(chain)
    assert main(["speedrun", "--output_root", str(chain)]) == 0
    assert _fingerprint(chain) == before  # nothing that exists was rewritten
    out = capsys.readouterr().out
    assert out.count("reusing") == len(speedrun.STAGES)
    report = (chain / "REPORT.md").read_text()
    for stage in speedrun.STAGES:
        assert f"| {stage} | reuse |" in report
    assert "exact_match 0.050 → 0.400" in report and "accuracy 0.500 → 0.800" in report
    assert "learned_reward 0.100 → 0.600" in report and "length (tokens) 40.000 → 38.000" in report
    assert "val loss 0.900, 0.4300 bits/byte" in report and "gsm8k_chat_local strict-match 0.020" in report
    assert f"≈ {7.0 / (math.log(2) * 3.0):.3f} bits/byte" in report  # the untrained model, through bytes/token
    for png in ("loss_curves.png", "rl_reward.png", "before_after.png"):
        assert (chain / png).stat().st_size > 1000 and f"({png})" in report
    assert (chain / "MODEL_CARD.md").read_text().startswith("---\nmodel-index:")
    assert "[MODEL_CARD.md](MODEL_CARD.md)" in report
    # the RL curve came from the trainer's TensorBoard log
    assert speedrun_report.gather(speedrun.SpeedrunConfig(output_root=str(chain)))["rlhf"]["curves"]["reward"][-1][0] == 4


def test_rerun_continues_from_the_first_missing_stage(chain, monkeypatch):
    shutil.rmtree(chain / "rlhf" / "final")  # a speedrun killed during RLHF: its folder is incomplete...
    state = json.loads((chain / speedrun.STATE_FILE).read_text())
    state["stages"]["rlhf"]["status"] = "running"  # ...and the state file says so
    (chain / speedrun.STATE_FILE).write_text(json.dumps(state))
    kept = {k: v for k, v in _fingerprint(chain).items() if not k.startswith(("rlhf", "eval"))}
    ran = []
    _fake_stages(monkeypatch, ran)
    assert main(["speedrun", "--output_root", str(chain)]) == 0
    assert ran == ["rlhf", "eval"]  # eval read the old RLHF model, so it runs again too
    assert {k: v for k, v in _fingerprint(chain).items() if not k.startswith(("rlhf", "eval"))} == kept
    stages = json.loads((chain / speedrun.STATE_FILE).read_text())["stages"]
    assert stages["rlhf"]["status"] == "done" and stages["rlhf"]["command"][:2] == ["hfscratch", "rlhf"]
    assert "| rlhf | run |" in (chain / "REPORT.md").read_text()


def test_redo_reruns_the_stage_and_every_later_one(chain, monkeypatch):
    ran = []
    _fake_stages(monkeypatch, ran)
    assert main(["speedrun", "--output_root", str(chain), "--redo", "reward"]) == 0
    assert ran == ["reward", "rlhf", "eval"]


def test_killed_pretraining_resumes_from_its_checkpoint_unless_redone(chain, monkeypatch):
    shutil.rmtree(chain / "pretrain" / "final")
    (chain / "pretrain" / "checkpoints" / "checkpoint-0000100").mkdir(parents=True)
    state = json.loads((chain / speedrun.STATE_FILE).read_text())
    state["stages"]["pretrain"]["status"] = "running"
    (chain / speedrun.STATE_FILE).write_text(json.dumps(state))
    commands = {}

    def fake(config, stage, number, argv):
        commands[stage] = argv
        assert stage != "pretrain" or (chain / "pretrain" / "checkpoints").is_dir() == ("--resume_from_checkpoint" in argv)
        if stage == "pretrain":
            shutil.rmtree(chain / "pretrain", ignore_errors=True)
        make_stage(config.root, stage)
        return 1.0

    monkeypatch.setattr(speedrun, "run_stage", fake)
    assert main(["speedrun", "--output_root", str(chain), "--estimate_only"]) == 0
    assert not commands
    assert main(["speedrun", "--output_root", str(chain)]) == 0
    assert list(commands) == ["pretrain", "sft", "reward", "rlhf", "eval"]
    assert commands["pretrain"][-2:] == ["--resume_from_checkpoint", "latest"]
    commands.clear()
    assert main(["speedrun", "--output_root", str(chain), "--redo", "pretrain"]) == 0
    assert "--resume_from_checkpoint" not in commands["pretrain"]


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_corrupt_stage_folder_is_a_one_line_error(chain, capsys, damage):
    weights = chain / "pretrain" / "final" / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:40])
    else:
        weights.unlink()
    before = _fingerprint(chain)
    assert main(["speedrun", "--output_root", str(chain)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
    assert "model.safetensors" in err and "--redo pretrain" in err
    assert _fingerprint(chain) == before


def test_missing_input_folder_names_the_stage_to_run(tmp_path, capsys):
    root = tmp_path / "speedrun"
    root.mkdir()
    make_stage(root, "data")
    (root / speedrun.STATE_FILE).write_text("{}")
    assert main(["speedrun", "--output_root", str(root), "--stages", "sft"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pretrain" in err and "hfscratch speedrun --stages pretrain sft" in err


def test_refuses_a_folder_that_is_not_a_speedrun(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["speedrun", "--output_root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--output_root" in err
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_overrides_cannot_rewire_the_chain(capsys):
    assert main(["speedrun", "--sft.args", '{"output_dir": "elsewhere"}', "--estimate_only"]) == 2
    assert "output_dir" in capsys.readouterr().err


def test_estimate_scales_to_the_gpu_found_and_states_the_cost(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA A100-SXM4-80GB")
    root = tmp_path / "gpu"
    assert main(["speedrun", "--config", "speedrun_gpu", "--output_root", str(root), "--estimate_only"]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA A100-SXM4-80GB" in out and "scaled by peak bf16 FLOP/s (0.32x)" in out
    assert "estimated cost: $" in out and "assumed $2.50 per GPU-hour" in out
    assert not root.exists()  # an estimate runs and writes nothing


def test_a_failing_stage_is_one_line_naming_its_error_and_log(tmp_path, capsys):
    root = tmp_path / "speedrun"
    assert main(["speedrun", "--output_root", str(root), "--stages", "data", "--data.args", '{"vocab_size": "many"}']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: the data stage failed (exit 2): vocab_size")
    assert "logs/data.log" in err and "continue from data" in err
    assert json.loads((root / speedrun.STATE_FILE).read_text())["stages"]["data"]["status"] == "running"


@pytest.mark.parametrize("name", ["speedrun", "speedrun_gpu"])
def test_shipped_configs_give_every_stage_a_valid_command(tmp_path, name):
    """Each stage's command line (base config + overrides + wiring) parses into that stage's own config tree."""
    trees = {"data": DataConfig, "pretrain": PretrainConfig, "sft": SFTStageConfig, "reward": RewardStageConfig,
             "rlhf": RLHFStageConfig}
    config = parse_config(speedrun.SpeedrunConfig, ["--config", name, "--output_root", str(tmp_path)], "test")
    make_stage(tmp_path, "data")
    for stage in speedrun.STAGES:
        argv = speedrun.stage_command(config, stage)
        assert argv[0] == stage
        if stage == "eval":
            parser = OneLineErrorParser()
            eval_cli.add_arguments(parser)
            assert parser.parse_args(argv[1:]).write_model_card
            continue
        if name == "speedrun_gpu" and stage in ("sft", "reward", "rlhf"):
            argv += ["--bf16", "false"]  # TRL refuses bf16 on a machine without a GPU; the rest is checked here
        parsed = parse_config(trees[stage], argv[1:], f"hfscratch {stage}")
        if stage != "data":
            assert speedrun.stage_steps(config, stage) == parsed.train.max_steps


TINY = {  # a seeded chain of a few steps per stage: each stage's own command, as the speedrun launches it
    "data": {"synthetic_problems": 150, "vocab_size": 320, "block_size": 64},
    "pretrain": {"max_steps": 3, "per_device_train_batch_size": 4, "eval_steps": 0, "save_steps": 0, "eval_max_batches": 2,
                 "report_to": "none", "seed": 1},
    "sft": {"max_steps": 2, "per_device_train_batch_size": 4, "synthetic_train_size": 16, "eval_samples": 4,
            "eval_max_new_tokens": 8, "save_strategy": "no", "report_to": "none", "dataloader_pin_memory": False},
    "reward": {"max_steps": 2, "per_device_train_batch_size": 4, "synthetic_train_size": 16, "eval_samples": 4,
               "report_to": "none", "dataloader_pin_memory": False},
    "rlhf": {"max_steps": 1, "per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 8,
             "synthetic_train_size": 8, "reward_weights": [1.0, 0.2, 0.25], "eval_samples": 4, "eval_num_samples": 0,
             "eval_max_new_tokens": 8, "logging_steps": 1, "gradient_checkpointing": False, "dataloader_pin_memory": False},
    "eval": {"tasks": "gsm8k_chat_local", "apply_chat_template": True, "limit": 2, "max_gen_toks": 8, "batch_size": 2},
}


def test_tiny_chain_runs_end_to_end_and_resumes(tmp_path, capsys, shared_data):
    """Every stage for real (a few steps each): first data + pretrain alone, then the whole chain, which reuses them."""
    root = tmp_path / "speedrun"
    tiny = {**TINY, "eval": {**TINY["eval"], "data_dir": str(shared_data)}}
    argv = ["speedrun", "--output_root", str(root), "--cpu_threads", "1"]
    for stage, args in tiny.items():
        argv += [f"--{stage}.args", json.dumps(args)]
    assert main([*argv, "--stages", "data", "pretrain"]) == 0
    out = capsys.readouterr().out
    assert "[2/6] pretrain: hfscratch pretrain --config pretrain_tiny --max_steps 3" in out
    report = (root / "REPORT.md").read_text()
    assert "| pretrain | run |" in report and "| sft | skip |" in report and "val loss" in report
    kept = _fingerprint(root)

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("reusing") == 2 and "[6/6] eval: hfscratch eval" in out
    assert {k: v for k, v in _fingerprint(root).items() if k.startswith(("data", "pretrain"))} == kept
    config = speedrun.SpeedrunConfig(output_root=str(root))
    assert all(speedrun.problem_with(config, stage) is None for stage in speedrun.STAGES)
    state = json.loads((root / speedrun.STATE_FILE).read_text())
    assert all(state["stages"][stage]["status"] == "done" for stage in speedrun.STAGES)
    assert "--reward_model_name_or_path" in state["stages"]["rlhf"]["command"]
    report = (root / "REPORT.md").read_text()
    for stage in speedrun.STAGES:
        assert f"| {stage} |" in report
    assert "exact_match" in report and "accuracy" in report and "learned_reward" in report and "strict-match" in report
    for png in ("loss_curves.png", "rl_reward.png", "before_after.png"):
        assert (root / png).stat().st_size > 1000
    assert "model-index" in (root / "MODEL_CARD.md").read_text()
    for log in (root / "logs").glob("*.log"):  # a normal run prints no warnings
        assert not re.search(r"\w+Warning:", log.read_text()), log.name
