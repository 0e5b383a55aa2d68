"""Bits-per-byte of a causal LM on texts, as a local `evaluate` metric module.

Load it by path (loading by name needs the Hub):

    import evaluate
    from hfscratch.evaluation import BITS_PER_BYTE_METRIC
    bpb = evaluate.load(str(BITS_PER_BYTE_METRIC))
    bpb.compute(predictions=[text], model="path/to/model", max_length=1024, stride=512)["bits_per_byte"]

`predictions` are the texts to score (the `evaluate` convention for intrinsic metrics such as perplexity).
`model` is a model folder, a Hub id or an in-memory `PreTrainedModel` (then pass `tokenizer` too).
The computation lives in `hfscratch.evaluation.intrinsic` so every entry point gives the same number.
"""

import evaluate

from hfscratch.evaluation.intrinsic import metric_module_info, score_predictions

_DESCRIPTION = """Bits-per-byte: summed negative log2-likelihood of the text's tokens divided by its UTF-8 byte count.
Tokenizer-independent, so models with different vocabularies compare. Long texts are scored with a sliding
window of `max_length` tokens that advances by `stride` tokens."""

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
    bits_per_byte (float), bits_per_token (float), perplexity (float, per token), nll_nats (float),
    tokens (int), bytes (int), and per_text_bits_per_byte (list of float).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BitsPerByte(evaluate.Metric):
    def _info(self):
        return metric_module_info(_DESCRIPTION, _KWARGS_DESCRIPTION, "https://arxiv.org/abs/2101.00027")

    def _compute(self, predictions, model, tokenizer=None, max_length=None, stride=None, batch_size=4, device=None):
        scores = score_predictions(predictions, model, tokenizer, max_length, stride, batch_size, device)
        result = scores.as_dict()
        result["per_text_bits_per_byte"] = [
            nll / (0.6931471805599453 * n_bytes) for nll, n_bytes in zip(scores.per_text_nll, scores.per_text_bytes)
        ]
        return result
