"""Token-level perplexity of a causal LM on texts as a local `evaluate` metric module; load it by path:
`evaluate.load(str(hfscratch.evaluation.PERPLEXITY_METRIC))`. Unlike the Hub's `perplexity` it slides a window over
long texts instead of truncating them; it keeps that metric's `perplexities` and `mean_perplexity` outputs."""

import evaluate

from hfscratch.evaluation.intrinsic import METRIC_ARGS_DESCRIPTION, metric_module_info, score_predictions

_DESCRIPTION = """Perplexity: exp of the mean negative log-likelihood per token, over a sliding window for long texts.
Depends on the tokenizer; compare models with different vocabularies with bits_per_byte instead."""

_KWARGS_DESCRIPTION = METRIC_ARGS_DESCRIPTION + """\
    perplexity (float, corpus level), perplexities (list of float), mean_perplexity (float), tokens (int).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self):
        return metric_module_info(_DESCRIPTION, _KWARGS_DESCRIPTION, "https://huggingface.co/docs/transformers/perplexity")

    def _compute(self, predictions, model, tokenizer=None, max_length=None, stride=None, batch_size=4, device=None):
        scores = score_predictions(predictions, model, tokenizer, max_length, stride, batch_size, device)
        per_text = scores.per_text_perplexity
        return {"perplexity": scores.perplexity, "perplexities": per_text,
                "mean_perplexity": sum(per_text) / len(per_text), "tokens": scores.tokens}
