"""Token-level perplexity of a causal LM on texts, as a local `evaluate` metric module (sliding window).

Load it by path (loading by name needs the Hub):

    import evaluate
    from hfscratch.evaluation import PERPLEXITY_METRIC
    ppl = evaluate.load(str(PERPLEXITY_METRIC))
    ppl.compute(predictions=texts, model="path/to/model", max_length=1024, stride=512)["perplexity"]

Unlike the Hub's `perplexity` metric this one does not truncate long texts: a window of `max_length` tokens slides
over each text by `stride` tokens, and each document's first token is predicted from BOS.
Outputs keep the Hub metric's names: `perplexities` (one per text) and `mean_perplexity`, plus the corpus-level
`perplexity` (exp of the mean NLL over all tokens of all texts).
"""

import evaluate

from hfscratch.evaluation.intrinsic import metric_module_info, score_predictions

_DESCRIPTION = """Perplexity: exp of the mean negative log-likelihood per token, over a sliding window for long texts.
Depends on the tokenizer; compare models with different vocabularies with bits_per_byte instead."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): texts to score; each is one document.
    model (str or PreTrainedModel): model folder, Hub id, or loaded model.
    tokenizer (optional): tokenizer or its path (default: the model's).
    max_length (int, optional): window size in tokens (default: the model's max_position_embeddings).
    stride (int, optional): tokens the window advances by (default: max_length // 2).
    batch_size (int, optional): windows per forward pass (default 4).
    device (str, optional): where to run a model loaded from a path (default: cuda if available).
Returns:
    perplexity (float, corpus level), perplexities (list of float), mean_perplexity (float), tokens (int).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self):
        return metric_module_info(_DESCRIPTION, _KWARGS_DESCRIPTION, "https://huggingface.co/docs/transformers/perplexity")

    def _compute(self, predictions, model, tokenizer=None, max_length=None, stride=None, batch_size=4, device=None):
        scores = score_predictions(predictions, model, tokenizer, max_length, stride, batch_size, device)
        per_text = scores.per_text_perplexity
        return {
            "perplexity": scores.perplexity,
            "perplexities": per_text,
            "mean_perplexity": sum(per_text) / len(per_text),
            "tokens": scores.tokens,
        }
