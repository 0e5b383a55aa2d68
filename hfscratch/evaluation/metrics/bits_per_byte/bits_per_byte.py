"""Bits-per-byte of a causal LM on texts as a local `evaluate` metric module (computed, like every entry point's, by
hfscratch.evaluation.intrinsic). Load it by path: `evaluate.load(str(hfscratch.evaluation.BITS_PER_BYTE_METRIC))`;
`predictions` are the texts, `model` a folder, Hub id or in-memory model (then pass `tokenizer`)."""

import evaluate

from hfscratch.evaluation.intrinsic import METRIC_ARGS_DESCRIPTION, metric_module_info, score_predictions

_DESCRIPTION = """Bits-per-byte: summed negative log2-likelihood of the text's tokens divided by its UTF-8 byte count.
Tokenizer-independent, so models with different vocabularies compare. Long texts are scored with a sliding
window of `max_length` tokens that advances by `stride` tokens."""

_KWARGS_DESCRIPTION = METRIC_ARGS_DESCRIPTION + """\
    bits_per_byte (float), bits_per_token (float), perplexity (float, per token), nll_nats (float),
    tokens (int), bytes (int), and per_text_bits_per_byte (list of float).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BitsPerByte(evaluate.Metric):
    def _info(self):
        return metric_module_info(_DESCRIPTION, _KWARGS_DESCRIPTION, "https://arxiv.org/abs/2101.00027")

    def _compute(self, predictions, model, tokenizer=None, max_length=None, stride=None, batch_size=4, device=None):
        scores = score_predictions(predictions, model, tokenizer, max_length, stride, batch_size, device)
        per_text = zip(scores.per_text_nll, scores.per_text_bytes)
        return {**scores.as_dict(), "per_text_bits_per_byte": [nll / (0.6931471805599453 * n) for nll, n in per_text]}
