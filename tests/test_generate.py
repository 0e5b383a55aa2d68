"""The lean decoding loop behind `model.generate`: the same tokens as transformers' own loop (and as Llama with the
same weights), the same streamer, processor and stopping-criteria behaviour, and a fallback wherever it does not
apply. `lean_decoding = False` on a model is transformers' loop, the reference here."""

import functools

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import LlamaConfig, LlamaForCausalLM, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

import hfscratch.modeling_hfscratch as modeling
from tests.test_model_behaviour import ARCHS, make_model

SAMPLING = dict(do_sample=True, temperature=0.9, top_k=20, top_p=0.9)


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    ids = torch.randint(3, 101, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, :4], mask[2, :7] = 0, 0
    return ids.masked_fill(mask == 0, 0), mask


def both_loops(model, seed=0, **kwargs):
    """(lean, reference) outputs of the same generate call, each from the same seed."""
    outputs = []
    for lean in (True, False):
        model.lean_decoding = lean
        torch.manual_seed(seed)
        outputs.append(model.generate(**kwargs))
    model.lean_decoding = True
    return outputs


@pytest.fixture
def lean_calls(monkeypatch):
    """Counts the calls that took the lean loop."""
    calls = []
    original = modeling.lean_sample

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(modeling, "lean_sample", counting)
    return calls


@pytest.mark.parametrize("arch", [*ARCHS, "tied"])
@pytest.mark.parametrize("mode", ["greedy", "sampling"])
@pytest.mark.parametrize("padded", [False, True])
def test_lean_loop_gives_transformers_tokens(arch, mode, padded, lean_calls):
    model = make_model("llama" if arch == "tied" else arch, tie_word_embeddings=arch == "tied")
    ids, mask = padded_batch()
    inputs = dict(input_ids=ids, attention_mask=mask) if padded else dict(input_ids=ids[:1])
    lean, reference = both_loops(model, max_new_tokens=24, eos_token_id=None, pad_token_id=0,
                                 **(SAMPLING if mode == "sampling" else dict(do_sample=False)), **inputs)
    assert lean_calls, "the lean loop did not run"
    assert lean.shape == reference.shape == (inputs["input_ids"].shape[0], 9 + 24)
    assert torch.equal(lean, reference)


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    model = make_model()
    ids, mask = padded_batch()
    runs = [both_loops(model, seed=seed, input_ids=ids, attention_mask=mask, max_new_tokens=20, eos_token_id=None,
                       pad_token_id=0, **SAMPLING)[0] for seed in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_greedy_tokens_equal_llamas_with_the_same_weights():
    model = make_model(tie_word_embeddings=False)
    llama = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in model.config.to_dict().items()
                                           if k in LlamaConfig().to_dict()})).eval()
    llama.load_state_dict(model.state_dict(), strict=False)
    ids, mask = padded_batch()
    for inputs in (dict(input_ids=ids[:1]), dict(input_ids=ids, attention_mask=mask)):
        kwargs = dict(max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0, **inputs)
        assert torch.equal(model.generate(**kwargs), llama.generate(**kwargs))


def test_eos_stops_rows_and_pads_finished_ones_like_transformers():
    model = make_model()
    ids, mask = padded_batch()
    free = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    eos = int(free[1, 9 + 3])  # row 1 ends where this token first appears (others may end too, or run on)
    first = int((free[1, 9:] == eos).nonzero()[0])
    lean, reference = both_loops(model, input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                                 eos_token_id=eos, pad_token_id=0)
    assert torch.equal(lean, reference)
    assert lean[1, 9 + first] == eos and (lean[1, 9 + first + 1:] == 0).all() and lean.shape[1] > 9 + first + 1


class Collect(BaseStreamer):
    def __init__(self):
        self.pieces, self.ended = [], False

    def put(self, value):
        self.pieces.append(value.tolist())

    def end(self):
        self.ended = True


class StopAfter(StoppingCriteria):
    """lm-eval's stop-sequence criteria have this shape: a look at the ids so far, a bool per row."""

    def __init__(self, length):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)


def test_streamer_processors_and_custom_stopping_criteria_behave_alike(lean_calls):
    model = make_model()
    ids = padded_batch()[0][:1]
    streams, outputs = [], []
    for lean in (True, False):
        model.lean_decoding = lean
        streamer = Collect()
        outputs.append(model.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=None, streamer=streamer,
                                      repetition_penalty=1.3, no_repeat_ngram_size=2,
                                      stopping_criteria=StoppingCriteriaList([StopAfter(9 + 11)])))
        streams.append(streamer)
    assert lean_calls == [1]
    assert torch.equal(outputs[0], outputs[1]) and outputs[0].shape[1] == 9 + 11
    assert streams[0].pieces == streams[1].pieces and streams[0].ended and streams[1].ended
    assert streams[0].pieces[0] == ids.tolist()  # the prompt first, as transformers streams it


@pytest.mark.parametrize("case", ["scores", "beams", "hook", "eager", "no_cache"])
def test_falls_back_to_transformers_where_the_lean_loop_does_not_apply(case, lean_calls):
    model = make_model(attn_implementation="eager") if case == "eager" else make_model()
    ids = padded_batch()[0][:1]
    kwargs = dict(max_new_tokens=8, do_sample=False, eos_token_id=None)
    kwargs.update({"scores": dict(return_dict_in_generate=True, output_scores=True), "beams": dict(num_beams=2),
                   "no_cache": dict(use_cache=False)}.get(case, {}))
    handle = model.model.layers[0].register_forward_pre_hook(lambda module, args: None) if case == "hook" else None
    out = model.generate(ids, **kwargs)
    sequences = out.sequences if case == "scores" else out
    assert sequences.shape == (1, 9 + 8) and not lean_calls
    if handle is not None:
        handle.remove()
        assert torch.equal(model.generate(ids, **kwargs), sequences) and lean_calls


def test_lora_model_decodes_through_the_lean_loop_with_its_adapters(lean_calls):
    from peft import LoraConfig, get_peft_model

    model = make_model()
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False))
    ids = padded_batch()[0][:1]
    kwargs = dict(input_ids=ids, max_new_tokens=16, do_sample=False, eos_token_id=None)
    lean = peft_model.generate(**kwargs)
    assert lean_calls
    model.lean_decoding = False
    assert torch.equal(lean, peft_model.generate(**kwargs))
    with peft_model.disable_adapter():  # the adapters really took part
        assert not torch.equal(lean, peft_model.generate(**kwargs))


def test_bf16_autocast_decoding_matches_transformers_loop():
    model = make_model()
    ids = padded_batch()[0][:1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lean, reference = both_loops(model, input_ids=ids, max_new_tokens=16, do_sample=False, eos_token_id=None)
    assert torch.equal(lean, reference)


@pytest.fixture
def fresh_graphs(monkeypatch):
    """The process-wide records of compiled and uncompiled decoding steps, emptied for one test."""
    monkeypatch.setattr(modeling, "COMPILED_DECODE_GRAPHS", {})
    monkeypatch.setattr(modeling, "DECODED_STEPS", {})
    return modeling.COMPILED_DECODE_GRAPHS


def test_compiled_decoding_step_gives_transformers_tokens(fresh_graphs):
    """After `compile_decoding_after` steps of one kind that kind's one-token step runs as a torch.compile graph:
    the tokens stay those of transformers' loop, for a single prompt and a left-padded batch, another kind (batch
    size) keeps its own count, and a second model of the same shape but other weights reuses the graph instead of
    compiling another, and decodes with its own weights (the graph reads them at every call, it has not kept the
    first model's)."""
    model = make_model(tie_word_embeddings=False)
    model.compile_decoding_after = 20
    ids, mask = padded_batch()
    single = dict(input_ids=ids[:1], max_new_tokens=24, do_sample=False, eos_token_id=None)
    eager, reference = both_loops(model, **single)  # 24 lean steps of this kind: from now on it is compiled
    assert not fresh_graphs and list(modeling.DECODED_STEPS.values()) == [24]
    compiled, _ = both_loops(model, **single)
    assert list(fresh_graphs.values()) == [True], "the step was not compiled"
    assert torch.equal(compiled, reference) and torch.equal(eager, reference)
    batch = dict(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False, eos_token_id=None)
    for compiled_kinds in ([True], [True, True]):  # a batch of 3 is a kind of its own, compiled once it is due
        compiled, reference = both_loops(model, **batch)
        assert torch.equal(compiled, reference) and list(fresh_graphs.values()) == compiled_kinds
    torch.manual_seed(5)
    first = model.generate(**{**batch, **SAMPLING})
    torch.manual_seed(5)
    assert torch.equal(first, model.generate(**{**batch, **SAMPLING})), "seeded sampling is not reproducible"

    graphs = counters["stats"]["unique_graphs"]
    twin = make_model(tie_word_embeddings=False)
    with torch.no_grad():
        for weight in twin.parameters():
            weight.mul_(-1.5)
    twin.compile_decoding_after = 0
    compiled, reference = both_loops(twin, **single)
    assert torch.equal(compiled, reference) and not torch.equal(reference, both_loops(model, **single)[1])
    assert counters["stats"]["unique_graphs"] == graphs and len(fresh_graphs) == 2


@pytest.mark.parametrize("arch", ["gpt2", "qk_norm"])
def test_compiled_decoding_step_of_other_architectures(arch, fresh_graphs):
    model = make_model(arch, tie_word_embeddings=False)
    model.compile_decoding_after = 0
    ids, mask = padded_batch()
    compiled, reference = both_loops(model, input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                                     eos_token_id=None)
    assert torch.equal(compiled, reference) and list(fresh_graphs.values()) == [True]
    if arch == "gpt2":  # one row: its step computes the linear layers (with biases here) as streamed projections
        with torch.no_grad():  # biases start at zero: give them values a lost bias would show in the tokens
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and module.bias is not None:
                    module.bias.normal_(0, 0.5)
        compiled, reference = both_loops(model, input_ids=ids[:1], max_new_tokens=16, do_sample=False,
                                         eos_token_id=None)
        assert torch.equal(compiled, reference) and list(fresh_graphs.values()) == [True, True]


@pytest.mark.parametrize("bias", [False, True])
def test_streamed_projection_is_the_linear_layer(bias):
    """The compiled one-row step's form of a linear layer (a product and a sum) gives the layer's output."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80, bias=bias)
    row = torch.randn(1, 1, 48)
    assert torch.allclose(modeling.streamed_projection(linear, row), linear(row), atol=1e-5)
    parts = modeling.LeanDecoder.gather_parts(make_model(), None, streamed=True)
    assert all(isinstance(part, functools.partial) for part in (parts[3], *parts[4][0][1:4]))


def test_compiled_decoding_step_of_a_lora_model_follows_its_adapter_switches(fresh_graphs):
    """A PEFT model's compiled step keeps dynamo's guards: its LoRA layers have merge, scaling and adapter switches
    that the step kind does not record. Merging the adapters keeps the kind (same modules, same frozen weights), so
    the same compiled step runs; a graph that still added the adapters' products would apply them twice."""
    from peft import LoraConfig, get_peft_model

    model = make_model(tie_word_embeddings=False)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False))
    model.compile_decoding_after = 0
    kwargs = dict(input_ids=padded_batch()[0][:1], max_new_tokens=16, do_sample=False, eos_token_id=None)
    for state in ("adapters", "merged"):
        if state == "merged":
            peft_model.merge_adapter()
        compiled = peft_model.generate(**kwargs)
        model.lean_decoding = False
        reference = peft_model.generate(**kwargs)
        model.lean_decoding = True
        assert torch.equal(compiled, reference), state
    assert list(fresh_graphs.values()) == [True]


def test_decoding_goes_on_uncompiled_where_compiling_fails(monkeypatch, fresh_graphs):
    def no_compiler(kind):
        def step(*args):
            raise RuntimeError("no C++ compiler")
        return step

    monkeypatch.setattr(modeling, "compiled_lean_forward", no_compiler)
    model = make_model(tie_word_embeddings=False)
    model.compile_decoding_after = 0
    kwargs = dict(input_ids=padded_batch()[0][:1], max_new_tokens=16, do_sample=False, eos_token_id=None)
    for _ in range(2):  # the second call does not try again
        lean, reference = both_loops(model, **kwargs)
        assert torch.equal(lean, reference) and list(fresh_graphs.values()) == [False]
    model.compile_decoding_after = None
    assert torch.equal(model.generate(**kwargs), reference)


def test_kv_buffers_are_rounded_up_only_where_the_step_will_be_compiled(monkeypatch, fresh_graphs):
    decoders = []

    class Recording(modeling.LeanDecoder):
        def __init__(self, *args):
            super().__init__(*args)
            decoders.append(self)

    monkeypatch.setattr(modeling, "LeanDecoder", Recording)
    model = make_model(tie_word_embeddings=False)
    kwargs = dict(input_ids=padded_batch()[0][:1], max_new_tokens=70, do_sample=False, eos_token_id=None)
    model.compile_decoding_after = None
    model.generate(**kwargs)
    model.compile_decoding_after = 0
    model.generate(**kwargs)
    assert [d.keys[0].shape[2] for d in decoders] == [9 + 70, 128]  # the call's length; the next power of two
