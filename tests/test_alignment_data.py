"""Alignment data shapes -> TRL formats, rewards, and the one-line errors for bad input (no training here)."""

import json

import pytest

from hfscratch.alignment.datasets import (
    load_raw_dataset,
    load_stage_dataset,
    pandalm_label,
    split_transcript,
    to_dpo_format,
    to_grpo_format,
    to_sft_format,
)
from hfscratch.alignment.rewards import answers_match, correctness_reward, extract_final_answer, format_reward
from hfscratch.cli import main as cli_main
from hfscratch.errors import CheckpointError, ConfigError, DataError


def test_dolly_gpteacher_gsm8k_become_chat(shared_data):
    dolly = to_sft_format(load_raw_dataset(str(shared_data / "dolly-hhrlhf-1k" / "dolly_hhrlhf_train_small.jsonl")))
    first = dolly[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"]
    assert first[0]["content"] == "what is kangen water?"  # the Alpaca template is stripped, only the instruction stays
    assert first[1]["content"].startswith("Kangen water is alkaline")
    teacher = to_sft_format(load_raw_dataset(str(shared_data / "gpteacher" / "codegen-instruct.json")))
    raw = json.loads((shared_data / "gpteacher" / "codegen-instruct.json").read_text())
    with_input = next(i for i, r in enumerate(raw) if r["input"])
    user = teacher[with_input]["messages"][0]["content"]
    assert user == raw[with_input]["instruction"].strip() + "\n\n" + raw[with_input]["input"].strip()
    gsm = to_sft_format(load_raw_dataset(str(shared_data / "gsm8k" / "test.jsonl")))
    assert gsm[0]["messages"][1]["content"].endswith("#### 18")
    grpo = to_grpo_format(load_raw_dataset(str(shared_data / "gsm8k" / "test.jsonl")))
    assert grpo[0]["answer"] == "18" and grpo[0]["prompt"][0]["role"] == "user"


def test_hh_rlhf_and_pandalm_become_preference_pairs(shared_data):
    hh = to_dpo_format(load_raw_dataset(str(shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz")))
    assert len(hh) > 2000
    row = hh[0]
    assert row["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["chosen"] != row["rejected"]
    panda_raw = json.loads((shared_data / "pandalm-testset" / "testset-v1.json").read_text())
    panda = to_dpo_format(load_raw_dataset(str(shared_data / "pandalm-testset" / "testset-v1.json")))
    decided = [r for r in panda_raw if pandalm_label(r) is not None]
    assert len(panda) == len(decided) < len(panda_raw)  # ties and split votes are dropped
    first = decided[0]
    better = first["response1"] if pandalm_label(first) == 1 else first["response2"]
    assert panda[0]["chosen"][0]["content"] == better.strip()
    assert pandalm_label({"annotator1": 1, "annotator2": 2, "annotator3": 0}) is None
    assert pandalm_label({"annotator1": 2, "annotator2": 2, "annotator3": 0}) == 2
    assert split_transcript("\n\nHuman: hi\n\nAssistant: hello") == [{"role": "user", "content": "hi"},
                                                                     {"role": "assistant", "content": "hello"}]


def test_synthetic_sets_in_each_stage_format():
    sft = load_stage_dataset("sft", "synthetic_math", synthetic_size=20)
    dpo = load_stage_dataset("dpo", "synthetic_math", synthetic_size=20)
    grpo = load_stage_dataset("grpo", "synthetic_math", synthetic_size=20)
    held = load_stage_dataset("eval", "synthetic_math", split="heldout", synthetic_size=20)
    assert sft.column_names == ["messages"] and set(dpo.column_names) == {"prompt", "chosen", "rejected", "pair_kind", "answer"}
    assert set(grpo.column_names) == {"prompt", "answer"}
    # The default recipe mix: half the SFT solutions end with a redundant "The answer is N." line, half the DPO pairs
    # are "style" pairs (rejected = the same correct solution with that line), exactly and reproducibly.
    styles = {"restated_fraction": 0.5, "style_fraction": 0.5}
    mixed_sft = load_stage_dataset("sft", "synthetic_math", synthetic_size=20, synthetic_styles=styles)
    assert sum("\nThe answer is " in r["messages"][-1]["content"] for r in mixed_sft) == 10
    assert all("<<" in r["messages"][-1]["content"] for r in mixed_sft)  # the working is the same in both styles
    mixed_dpo = load_stage_dataset("dpo", "synthetic_math", synthetic_size=20, synthetic_styles=styles)
    assert mixed_dpo["pair_kind"].count("style") == 10
    for row in mixed_dpo:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert correctness_reward([row["chosen"]], [row["answer"]]) == [1.0] and "The answer is" not in chosen
        assert correctness_reward([row["rejected"]], [row["answer"]]) == ([1.0] if row["pair_kind"] == "style" else [0.0])
        assert ("The answer is" in rejected) == (row["pair_kind"] == "style")
    assert mixed_dpo[:] == load_stage_dataset("dpo", "synthetic_math", synthetic_size=20, synthetic_styles=styles)[:]
    assert not {r["prompt"][0]["content"] for r in held} & {r["prompt"][0]["content"] for r in grpo}
    assert all(correctness_reward([r["messages"][-1:]], [r["answer"]]) == [1.0] for r in held)


def test_missing_columns_and_empty_data_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1, "bar": 2}\n')
    with pytest.raises(DataError, match=r"columns \['bar', 'foo'\].*SFT expects one of: messages"):
        to_sft_format(load_raw_dataset(str(bad)), "bad.jsonl")
    with pytest.raises(DataError, match="DPO expects one of"):
        to_dpo_format(load_raw_dataset(str(bad)))
    ties = tmp_path / "ties.json"
    ties.write_text(json.dumps([{"instruction": "x", "input": "", "response1": "a", "response2": "b",
                                 "annotator1": 0, "annotator2": 0, "annotator3": 0}]))
    with pytest.raises(DataError, match="no preference pairs left"):
        to_dpo_format(load_raw_dataset(str(ties)), "ties.json")
    renamed = load_raw_dataset(str(bad), column_map={"foo": "question", "bar": "answer"})
    assert renamed.column_names == ["question", "answer"]
    with pytest.raises(DataError, match="does not exist"):
        load_raw_dataset(str(tmp_path / "nope.jsonl"))


def test_answer_extraction_and_rewards():
    assert extract_final_answer("so 3 + 4 = 7\n#### 7") == "7"
    assert extract_final_answer("It costs $1,250.") == "1250"
    assert extract_final_answer("no numbers") is None
    assert answers_match("1,000", "1000") and answers_match("0.5", "1/2") and not answers_match("7", "8")
    assert answers_match("\\frac{1}{2}", "0.5")  # symbolic forms go through math-verify
    completions = [[{"role": "assistant", "content": "He has 2 + 3 = <<2+3=5>>5.\n#### 5"}],
                   [{"role": "assistant", "content": "#### 5"}], "He has 6 apples"]
    assert correctness_reward(completions, ["5", "5", "5"]) == [1.0, 1.0, 0.0]
    assert format_reward(completions) == [1.0, 0.0, 0.0]


def test_tokenizer_template_and_checkpoint_errors(tmp_path, tiny_tokenizer, capsys, monkeypatch):
    import copy

    from hfscratch.alignment.common import check_chat_template, check_checkpoint_path

    tiny_tokenizer = copy.deepcopy(tiny_tokenizer)  # the session fixture is shared: change a copy only
    with pytest.raises(ConfigError, match="no chat template.*--use_hfscratch_chat_template"):
        check_chat_template(tiny_tokenizer, fix=False)
    tiny_tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ConfigError, match="without \\{% generation %\\} markers"):
        check_chat_template(tiny_tokenizer, fix=False)
    check_chat_template(tiny_tokenizer, fix=True)
    ids = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                             return_assistant_tokens_mask=True, return_dict=True)
    assert sum(ids["assistant_masks"]) > 0
    monkeypatch.chdir(tmp_path)  # an empty folder: whatever outputs/ the repo holds must not matter
    with pytest.raises(CheckpointError, match="run `hfscratch pretrain` first"):
        check_checkpoint_path("outputs/pretrain-tiny/final")
    # GRPO's default start is the DPO output: the message names the stage that makes it
    with pytest.raises(CheckpointError, match="run `hfscratch dpo` first"):
        check_checkpoint_path("outputs/dpo-synthetic-math/final")
    # The CLI turns it into one line and exit code 2 (no checkpoint in this folder).
    assert cli_main(["sft", "--max_steps", "1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "Warning" not in line and line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "`hfscratch pretrain`" in err[0]  # one line, no traceback


def test_sft_on_conversations_without_assistant_turn_is_one_line_error(tmp_path, tiny_tokenizer):
    """TRL's assistant-only loss would stop with a RuntimeError traceback; the CLI says what is wrong in one line."""
    import copy
    import subprocess
    import sys

    import datasets

    from hfscratch import HfscratchForCausalLM
    from hfscratch.alignment.datasets import check_assistant_turns
    from hfscratch.tokenizer import ensure_chat_template
    from tests.helpers import tiny_config

    mixed = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]},
                                        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]}])
    with pytest.raises(DataError, match=r"1 of 2 conversations in mixed.jsonl have no assistant turn \(first: row 1, roles \['system', 'user'\]\)"):
        check_assistant_turns(mixed, "mixed.jsonl")
    check_assistant_turns(mixed.select([0]), "ok.jsonl")  # every row has an answer: no error

    tokenizer = ensure_chat_template(copy.deepcopy(tiny_tokenizer))
    model_dir = tmp_path / "model"
    HfscratchForCausalLM(tiny_config(tokenizer, num_hidden_layers=1)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "user_only.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} + {i}?"}]}) + "\n" for i in range(4)))
    argv = ["sft", "--model_name_or_path", str(model_dir), "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
            "--max_steps", "1", "--report_to", "none"]
    proc = subprocess.run([sys.executable, "-m", "hfscratch.cli", *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f"no conversation in {data} has an assistant turn" in errors[0] and "--assistant_only_loss false" in errors[0]
    assert not (tmp_path / "out" / "final").exists()  # stopped before training
