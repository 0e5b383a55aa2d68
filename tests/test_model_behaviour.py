"""Model behaviour that generation, training and the HF ecosystem rely on."""

import warnings

import pytest
import torch
from transformers import DynamicCache, StaticCache

from hfscratch import HfscratchConfig, HfscratchForCausalLM
from hfscratch.modeling_hfscratch import CACHE_FIELD, CACHE_RENAMED

ARCHS = {
    "llama": dict(),
    "qk_norm": dict(qk_norm=True, num_key_value_heads=1),
    "gpt2": dict(position_embedding_type="learned", norm_type="layernorm", mlp_type="gelu", attention_bias=True, mlp_bias=True),
}


def make_model(arch="llama", **overrides):
    torch.manual_seed(0)
    kwargs = dict(
        vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    kwargs.update(ARCHS[arch])
    kwargs.update(overrides)
    model = HfscratchForCausalLM(HfscratchConfig(**kwargs)).eval()
    # Sharpen the random model so greedy decoding is not a tie-breaking lottery.
    with torch.no_grad():
        model.lm_head.weight.mul_(8) if not model.config.tie_word_embeddings else None
    return model


@pytest.mark.parametrize("arch", list(ARCHS))
def test_greedy_generate_with_and_without_cache(arch):
    model = make_model(arch, tie_word_embeddings=False)
    prompt = torch.randint(3, 101, (2, 7))
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, eos_token_id=None)
        uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False, eos_token_id=None)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_left_padded_batch_matches_single_prompts(arch):
    model = make_model(arch, tie_word_embeddings=False)
    prompts = [torch.randint(3, 101, (n,)) for n in (4, 9, 6)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
        for i, p in enumerate(prompts):
            alone = model.generate(p[None], max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
            assert torch.equal(batched[i, width:], alone[0, len(p):]), f"prompt {i} differs when left-padded"


def test_sampling_is_reproducible_with_seed():
    model = make_model()
    prompt = torch.randint(3, 101, (1, 5))
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append(model.generate(prompt, max_new_tokens=15, do_sample=True, top_k=20, temperature=1.0, eos_token_id=None))
    torch.manual_seed(7)
    other = model.generate(prompt, max_new_tokens=15, do_sample=True, top_k=20, temperature=1.0, eos_token_id=None)
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], other)


def test_static_cache_generation_matches_dynamic():
    model = make_model(tie_word_embeddings=False)
    prompt = torch.randint(3, 101, (1, 6))
    with torch.no_grad():
        dynamic = model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None)
        static = model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None, cache_implementation="static")
    assert torch.equal(dynamic, static)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_documents_do_not_see_each_other(arch, attn):
    model = make_model(arch)
    model.set_attn_implementation(attn)
    docs = [torch.randint(3, 101, (n,)) for n in (5, 8, 3)]
    packed = torch.cat(docs)[None]
    position_ids = torch.cat([torch.arange(len(d)) for d in docs])[None]
    with torch.no_grad():
        packed_logits = model(packed, position_ids=position_ids).logits[0]
        separate = torch.cat([model(d[None]).logits[0] for d in docs])
    assert torch.allclose(packed_logits, separate, atol=1e-5)


def test_attention_implementations_agree():
    model = make_model()
    x = torch.randint(3, 101, (2, 16))
    logits = {}
    for impl in ("eager", "sdpa", "flex_attention"):
        model.set_attn_implementation(impl)
        assert model.config._attn_implementation == impl
        with torch.no_grad():
            logits[impl] = model(x).logits
    assert torch.allclose(logits["eager"], logits["sdpa"], atol=1e-5)
    assert torch.allclose(logits["eager"], logits["flex_attention"], atol=1e-4)


def test_compiled_forward_is_causal_and_keeps_packed_documents_apart():
    # Under torch.compile a forward without mask or positions skips transformers' mask builder and lets SDPA run
    # is_causal; one with restarting position_ids still needs the document mask. Both must match eager attention.
    model = make_model()
    x = torch.randint(3, 101, (2, 12))
    docs = [torch.randint(3, 101, (n,)) for n in (5, 7)]
    packed, position_ids = torch.cat(docs)[None], torch.cat([torch.arange(len(d)) for d in docs])[None]
    with torch.no_grad():
        model.set_attn_implementation("eager")
        expected_plain, expected_packed = model(x).logits, model(packed, position_ids=position_ids).logits
        model.set_attn_implementation("sdpa")
        compiled = torch.compile(model.forward, fullgraph=True)
        torch.testing.assert_close(compiled(input_ids=x).logits, expected_plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(compiled(input_ids=packed, position_ids=position_ids).logits, expected_packed, atol=1e-5, rtol=1e-5)
    # and changing a later token must not move an earlier position's logits (causality, not just agreement)
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] + 1 - 3) % 98 + 3
    with torch.no_grad():
        torch.testing.assert_close(compiled(input_ids=changed).logits[:, :-1], expected_plain[:, :-1], atol=1e-5, rtol=1e-5)


def test_output_contract_and_retained_grads():
    model = make_model()
    model.set_attn_implementation("eager")
    x = torch.randint(3, 101, (2, 10))
    out = model(x, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert len(out.attentions) == model.config.num_hidden_layers
    assert out.attentions[0].shape == (2, 4, 10, 10)
    # causal: no attention to the future
    assert torch.all(out.attentions[0][..., 0, 1:] == 0)
    out.hidden_states[1].retain_grad()
    out.attentions[0].retain_grad()
    out.logits.sum().backward()
    assert out.hidden_states[1].grad is not None and out.attentions[0].grad is not None
    as_tuple = model(x, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.logits)


def test_logits_to_keep():
    model = make_model()
    x = torch.randint(3, 101, (2, 10))
    with torch.no_grad():
        full = model(x).logits
        last = model(x, logits_to_keep=1).logits
    assert last.shape == (2, 1, 101) and torch.allclose(last[:, 0], full[:, -1], atol=1e-6)


def test_num_items_in_batch_gives_token_weighted_loss():
    model = make_model()
    x = torch.randint(3, 101, (2, 12))
    labels = x.clone()
    labels[1, 4:] = -100
    n_tokens = int((labels[:, 1:] != -100).sum())
    mean_loss = model(x, labels=labels).loss
    summed = model(x, labels=labels, num_items_in_batch=torch.tensor(1)).loss
    assert torch.allclose(summed / n_tokens, mean_loss, atol=1e-6)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("num_items", [None, 37])
def test_skip_logits_loss_and_gradients_match_the_plain_loss(tied, num_items):
    """The chunked loss (no logits built) against transformers' ForCausalLMLoss on the same model."""
    x = torch.randint(3, 101, (3, 20))
    labels = x.clone()
    labels[:, :4] = -100
    labels[2, 11:] = -100
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    results = []
    for skip in (False, True):
        model = make_model(tie_word_embeddings=tied).train()
        out = model(x, labels=labels, skip_logits=skip, **kwargs)
        out.loss.backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (plain, plain_grads), (chunked, chunked_grads) = results
    assert chunked.logits is None and plain.logits is not None
    torch.testing.assert_close(chunked.loss, plain.loss, rtol=1e-6, atol=1e-6)
    for name, grad in plain_grads.items():
        # fp32 summation order differs between the two paths: compare at 1e-5 of each gradient's scale
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item())


def test_chunked_cross_entropy_across_many_chunks_and_without_grad():
    """A vocabulary large enough for 16-row chunks (last one partial); ignored rows; no_grad gives the loss only."""
    from hfscratch.modeling_hfscratch import ChunkedLinearCrossEntropy

    torch.manual_seed(0)
    vocab, n = 2**17, 100
    weight = (torch.randn(vocab, 8) * 0.5).requires_grad_()
    hidden = torch.randn(n, 8, requires_grad=True)
    labels = torch.randint(0, vocab, (n,))
    labels[::9] = -100
    reference = torch.nn.functional.cross_entropy(hidden @ weight.T, labels, ignore_index=-100, reduction="sum")
    ref_grads = torch.autograd.grad(reference, (hidden, weight))
    total = ChunkedLinearCrossEntropy.apply(hidden, weight, labels, torch.float32, -100, True)
    grads = torch.autograd.grad(total, (hidden, weight))
    torch.testing.assert_close(total, reference, rtol=1e-6, atol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(ChunkedLinearCrossEntropy.apply(hidden, weight, labels, torch.float32, -100, False), reference.detach())


def test_skip_logits_under_bf16_autocast_is_close_to_the_plain_loss():
    x = torch.randint(3, 101, (2, 16))
    losses = []
    for skip in (False, True):
        model = make_model().train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, labels=x, skip_logits=skip).loss
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) < 1e-3 * abs(losses[0])


@pytest.mark.parametrize("arch", list(ARCHS))
def test_gradient_checkpointing_gives_same_gradients(arch):
    x = torch.randint(3, 101, (2, 16))
    grads = []
    for checkpointing in (False, True):
        model = make_model(arch).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model(x, labels=x).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_bf16_autocast_forward_backward():
    model = make_model().train()
    x = torch.randint(3, 101, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, labels=x)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_residual_projections_use_scaled_init():
    model = HfscratchForCausalLM(HfscratchConfig(vocab_size=64, hidden_size=256, num_hidden_layers=8, num_attention_heads=4, intermediate_size=1024))
    std = model.config.initializer_range
    layer = model.model.layers[0]
    assert abs(layer.self_attn.q_proj.weight.std().item() - std) < 0.002
    assert abs(layer.self_attn.o_proj.weight.std().item() - std / 4) < 0.001
    assert abs(layer.mlp.down_proj.weight.std().item() - std / 4) < 0.001
    assert torch.all(layer.input_layernorm.weight == 1)


def test_dynamic_cache_object_is_used_and_extended():
    model = make_model()
    x = torch.randint(3, 101, (1, 6))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = model(x, cache=cache, use_cache=True)
        returned = getattr(out, CACHE_FIELD)
        assert returned is cache and returned.get_seq_length() == 6
        nxt = model(x[:, -1:], cache=returned, use_cache=True)
        full = model(torch.cat([x, x[:, -1:]], dim=1)).logits[:, -1]
    assert torch.allclose(nxt.logits[:, -1], full, atol=1e-5)
    assert isinstance(StaticCache, type)


def test_old_cache_argument_name_still_works():
    # Callers written for transformers < 5.24 pass `past_key_values`; where the library has made the rename that is
    # a FutureWarning (as for Llama), the same cache is used either way, and both names at once is an error.
    model = make_model()
    x = torch.randint(3, 101, (2, 5))
    with torch.no_grad():
        new = model(x, cache=DynamicCache(config=model.config), use_cache=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old_cache = DynamicCache(config=model.config)
            old = model(x, past_key_values=old_cache, use_cache=True)
    assert getattr(old, CACHE_FIELD) is old_cache and old_cache.get_seq_length() == 5
    torch.testing.assert_close(old.logits, new.logits)
    renamed = [w for w in caught if "`past_key_values` is deprecated" in str(w.message)]
    assert len(renamed) == (1 if CACHE_RENAMED else 0)
    with pytest.raises(ValueError):
        model(x, cache=DynamicCache(config=model.config), past_key_values=DynamicCache(config=model.config))


def test_gradient_checkpointing_builds_no_cache_to_replay():
    model = make_model()
    model.activation_checkpointing_enable()
    model.train()
    out = model(torch.randint(3, 101, (1, 6)), use_cache=True)
    assert getattr(out, CACHE_FIELD) is None


def test_forward_signature_is_precomputed_and_exact():
    # generate() inspects the signature of remote-code models every step; the cached one must be the real one.
    import inspect

    model = HfscratchForCausalLM(HfscratchConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2))
    assert model.is_remote_code()  # registered for auto_map, so generate() takes that path
    unwrapped = list(inspect.signature(inspect.unwrap(HfscratchForCausalLM.forward)).parameters)
    assert list(inspect.signature(model.forward).parameters) == unwrapped[1:]
    assert {"input_ids", "labels", "logits_to_keep", "skip_logits", "kwargs"} <= set(unwrapped)
