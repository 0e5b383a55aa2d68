"""SFT with TRL on a tiny model pretrained here: the held-out effect of fine-tuning, measured."""

import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.alignment_setup import sft_run


def test_sft_raises_heldout_exact_match_and_teaches_the_chat_format():
    result = sft_run()
    before, after = result["before"], result["after"]
    print({k: (round(before[k], 3), round(after[k], 3)) for k in before if isinstance(before[k], float)})  # pytest -s
    # Held-out problems (a split the training generator can never produce): the pretrained model, prompted in
    # chat format, gets few right; after SFT it answers in the '#### N' format, stops, and gets many more right.
    # Measured on 64 problems (seeds 0 / 1 / 2): exact-match 0.156 -> 0.406 / 0.062 -> 0.531 / 0.094 -> 0.359.
    assert after["exact_match"] >= before["exact_match"] + 0.15, (before, after)
    assert after["eos_rate"] >= 0.95 and after["format_rate"] >= 0.95, (before, after)
    # The reference solutions of held-out problems become much more likely (per token, eos included).
    assert after["answer_loglik"] > before["answer_loglik"] + 0.5, (before, after)
    assert after["mean_reward"] > before["mean_reward"] + 0.15, (before, after)
    # The same held-out questions as plain GSM8K prompts ("Question: ...\nAnswer:", lm-eval's gsm8k prompt, no chat
    # template). In the default chain SFT carries over (0.14 -> 0.60 on 200 problems); this 330k-parameter test model
    # trained only on chat does not transfer reliably (seed 0: 0.203 -> 0.141 and 0.203 -> 0.312 with other SFT data),
    # so here it must be measured and must not collapse.
    assert after["gsm8k_format_exact_match"] >= before["gsm8k_format_exact_match"] - 0.1, (before, after)
    losses = result["train_loss"]
    assert losses[-1] < losses[0]


def test_sft_output_is_a_standalone_checkpoint_with_results():
    result = sft_run()
    final = Path(result["final"])
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert "{% generation %}" in tokenizer.chat_template
    assert model.config.model_type == "hfscratch"
    assert model.config.use_cache, "the Trainer's use_cache=False was saved with the model"
    saved = json.loads((final.parent / "alignment_results.json").read_text())
    assert saved["after"]["eos_rate"] == result["after"]["eos_rate"]
    assert (final.parent / "sft_before_after.png").stat().st_size > 1000
    assert not any(p.name.startswith("final.") for p in final.parent.iterdir())  # no temp folders left behind
