"""The one option parser: YAML sections + command line into the stage config trees, with one-line errors."""

from pathlib import Path

import pytest
import torch

from hfscratch.alignment.config import (
    DPOStageConfig,
    GRPOStageConfig,
    RewardStageConfig,
    RLHFStageConfig,
    SFTStageConfig,
)
from hfscratch.data import DataConfig
from hfscratch.errors import ConfigError
from hfscratch.options import parse_config
from hfscratch.speedrun import SpeedrunConfig
from hfscratch.training import PretrainConfig


def parse(argv, root=PretrainConfig, config="pretrain_tiny"):
    return parse_config(root, argv, prog="test", default_config=config)


def test_paths_tails_bare_names_and_both_spellings():
    c = parse(["--data.block_size", "64", "--synthetic.seed", "4", "--seed", "3", "--lr-schedule", "wsd",
               "--torch_compile", "--sources", "a.txt", "b.txt", "--hidden_size=64", "--data.cleaning.minhash_dedup", "false"])
    assert c.data.block_size == 64 and c.data.synthetic.seed == 4
    assert c.train.seed == 3 and c.data.split_seed == 0  # a bare name means the shallowest field of that name
    assert c.train.lr_schedule == "wsd" and c.train.torch_compile is True and c.model.hidden_size == 64
    assert c.data.sources == ["a.txt", "b.txt"] and c.data.cleaning.minhash_dedup is False
    # the YAML's values stay where the command line does not override them
    assert (c.train.max_steps, c.train.run_name, c.data.name) == (300, "pretrain-tiny", "synthetic_math")


def test_yaml_sections_include_and_override(tmp_path):
    (tmp_path / "base.yaml").write_text("name: books\nvocab_size: 4096\nblock_size: 512\n")
    run = tmp_path / "run.yaml"
    run.write_text(f"model:\n  model_size: small\ndata:\n  include: {tmp_path / 'base.yaml'}\n  block_size: 128\n"
                   "  synthetic:\n    max_steps: 2\n    operations: ['+']\ntrain:\n  max_steps: 5\n  learning_rate: 1e-3\n")
    c = parse(["--config", str(run), "--vocab_size", "1024"])
    assert (c.model.model_size, c.data.name, c.data.block_size, c.data.vocab_size) == ("small", "books", 128, 1024)
    assert (c.data.synthetic.max_steps, c.data.synthetic.operations) == (2, ["+"])
    assert c.train.max_steps == 5 and c.train.learning_rate == pytest.approx(1e-3)  # "1e-3" is a string to PyYAML
    data = parse_config(DataConfig, ["--config", "data_gutenberg"], prog="test")
    assert data.cleaning.c4_quality is False and data.cleaning.tasks == 2
    assert parse([], config="pretrain_gpt2_124m").data.max_documents is None  # included, then overridden to null


def test_foreign_sections_take_every_field():
    c = parse_config(SFTStageConfig, ["--max_steps", "7", "--report_to", "none", "--synthetic.max_value", "5",
                                      "--model_name_or_path", "x"], prog="test", default_config="sft_synthetic_math")
    assert c.train.max_steps == 7 and c.train.report_to == [] or c.train.report_to in ("none", ["none"])
    assert c.data.synthetic.max_value == 5 and c.data.synthetic.max_steps == 2 and c.model.model_name_or_path == "x"
    assert c.train.assistant_only_loss is True and c.train.output_dir == "outputs/sft-synthetic-math"


@pytest.mark.parametrize("argv, message", [
    (["--max_stepz", "5"], "unknown option --max_stepz (did you mean --max_steps"),
    (["--learning_rate", "fast"], "train.learning_rate (from the command line) takes a number, got 'fast'"),
    (["--max_steps", "1.5"], "takes an integer"),
    (["--torch_compile", "maybe"], "takes true or false"),
    (["--max_steps", "1", "2"], "takes one value"),
    (["--block_size", "1"], "block_size=1 must be at least 2"),
    (["--validation_fraction", "0"], "validation_fraction=0.0 must be in (0, 1)"),
    (["--synthetic.max_steps", "0"], "need 1 <= min_steps <= max_steps"),
    (["--max_steps"], "option --max_steps needs a value"),
    (["--config", "no_such_config"], "config file no_such_config not found"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_one_line_errors(argv, message):
    with pytest.raises(ConfigError) as err:
        parse(argv)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_stepz: 5\n")
    with pytest.raises(ConfigError, match=r"unknown key .max_stepz. in .*bad.yaml \(section train\) \(did you mean max_steps"):
        parse(["--config", str(bad)])
    bad.write_text("train:\n  max_steps: [1, 2]\n")
    with pytest.raises(ConfigError, match="takes one value"):
        parse(["--config", str(bad)])
    bad.write_text("data: 5\n")
    with pytest.raises(ConfigError, match="section data must be a mapping or the name of a config"):
        parse(["--config", str(bad)])


def test_help_lists_every_section(capsys):
    with pytest.raises(SystemExit) as done:
        parse(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model.model_size", "--data.block_size", "--data.synthetic.max_value", "--data.cleaning.minhash_dedup",
                   "--train.learning_rate"):
        assert option in out
    assert "(default: 300)" in out  # the YAML's value for train.max_steps


def test_yaml_keys_belong_to_their_section(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("max_steps: 5\n")  # the pre-sections layout: the error says where the key goes now
    with pytest.raises(ConfigError, match=r"unknown key 'max_steps' in .*flat.yaml \(it is a field of train / data.synthetic: move it"):
        parse(["--config", str(flat)])
    flat.write_text("data:\n  seed: 1\n")  # tails are a command-line convenience only: data.seed is not data.synthetic.seed
    with pytest.raises(ConfigError, match=r"unknown key 'seed' in .*\(section data\) \(it is a field of train / data.synthetic"):
        parse(["--config", str(flat)])


TREES = {"data": DataConfig, "pretrain": PretrainConfig, "sft": SFTStageConfig, "dpo": DPOStageConfig,
         "grpo": GRPOStageConfig, "reward": RewardStageConfig, "rlhf": RLHFStageConfig, "speedrun": SpeedrunConfig}
SHIPPED = sorted((Path(__file__).parents[1] / "hfscratch" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_config_parses_into_its_stage_tree(path):
    # A typo'd key or a value out of range in a shipped YAML fails here, not in a user's run.
    tree, argv = TREES[path.stem.split("_")[0]], ["--config", str(path)]
    if path.stem.endswith("_gpu") and tree is not SpeedrunConfig and not torch.cuda.is_available():
        argv += ["--bf16", "false"]  # transformers refuses bf16 training args without a GPU; every other key is checked
    assert isinstance(parse_config(tree, argv, path.stem), tree)
