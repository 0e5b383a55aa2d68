"""SFT with TRL on a tiny model pretrained here: the held-out effect of fine-tuning, measured."""

import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.alignment_setup import sft_run


def test_sft_teaches_the_chat_format_and_the_answers():
    result = sft_run()
    before, after = result["before"], result["after"]
    # Before SFT the pretrained model rambles on past the answer; after it, it answers and stops.
    assert after["eos_rate"] >= before["eos_rate"] + 0.4, (before, after)
    assert after["format_rate"] >= before["format_rate"] + 0.4, (before, after)
    # The reference solutions of held-out problems become much more likely (per token, eos included).
    assert after["answer_loglik"] > before["answer_loglik"] + 0.5, (before, after)
    assert after["mean_reward"] > before["mean_reward"], (before, after)
    losses = result["train_loss"]
    assert losses[-1] < losses[0]


def test_sft_output_is_a_standalone_checkpoint_with_results():
    result = sft_run()
    final = Path(result["final"])
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert "{% generation %}" in tokenizer.chat_template
    assert model.config.model_type == "hfscratch"
    saved = json.loads((final.parent / "alignment_results.json").read_text())
    assert saved["after"]["eos_rate"] == result["after"]["eos_rate"]
    assert (final.parent / "sft_before_after.png").stat().st_size > 1000
    assert not any(p.name.startswith("final.") for p in final.parent.iterdir())  # no temp folders left behind
