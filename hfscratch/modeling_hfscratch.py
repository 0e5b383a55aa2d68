"""The hfscratch decoder: a from-scratch causal LM that *is* a transformers model.

Reads top to bottom in data-flow order: norm -> rotary -> MLP -> attention -> block -> model -> causal LM.
The default config computes exactly what `LlamaForCausalLM` computes (tested to 1e-5), `qk_norm=True` what
`Qwen3ForCausalLM` computes, and `HfscratchConfig.gpt2_style()` gives learned positions, LayerNorm and GELU.
Attention, KV cache and masks go through transformers' interfaces, so generation, packing, PEFT, TRL and lm-eval
work with no conversion. Imports only torch and transformers: `save_pretrained` copies this file and the config
next to the weights, so a saved folder loads with `trust_remote_code=True` where hfscratch is not installed.
"""

import functools
import inspect
import types
from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GenericForSequenceClassification, GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_hfscratch import HfscratchConfig

# ---------------------------------------------------------------------------------------------- cache argument name

# transformers 5.24 renamed the KV-cache argument of model forwards, and the cache field of their outputs, from
# `past_key_values` to `cache`; 5.23 uses `past_key_values` everywhere (generate passes it, outputs carry it). This
# file is copied next to every saved model and runs on whatever version loads it, so it takes `cache` as
# transformers' own models do and maps the old name as they do: `deprecate_kwarg` (a FutureWarning) where the library
# has made the rename, a silent rename where the old name is still the library's own.
CACHE_RENAMED = "cache" in inspect.signature(create_causal_mask).parameters
CACHE_FIELD = "cache" if CACHE_RENAMED else "past_key_values"  # the cache's field name in model outputs


def accepts_past_key_values(forward: Callable) -> Callable:
    if CACHE_RENAMED:
        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)(forward)

    @functools.wraps(forward)
    def forward_with_old_name(*args, **kwargs):
        if "past_key_values" in kwargs:
            if "cache" in kwargs:
                raise ValueError("Both `past_key_values` and `cache` are set: pass the KV cache as `cache` only.")
            kwargs["cache"] = kwargs.pop("past_key_values")
        return forward(*args, **kwargs)

    return forward_with_old_name

# ---------------------------------------------------------------------------------------------- norms


class HfscratchRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 (bf16 variance underflows), cast back before the gain, as Llama does. torch's
        # rms_norm is one fused kernel on GPUs (on CPU it runs Llama's five ops); bit-identical fp32 results.
        input_dtype = hidden_states.dtype
        normed = nn.functional.rms_norm(hidden_states.to(torch.float32), (hidden_states.shape[-1],), eps=self.variance_epsilon)
        return self.weight * normed.to(input_dtype)


class HfscratchLayerNorm(nn.LayerNorm):
    """GPT-2 style LayerNorm (with bias); a named subclass so init and FSDP treat it as a norm."""


def make_norm(config: HfscratchConfig, dim: int) -> nn.Module:
    if config.norm_type == "layernorm":
        return HfscratchLayerNorm(dim, eps=config.rms_norm_eps)
    return HfscratchRMSNorm(dim, eps=config.rms_norm_eps)


# ---------------------------------------------------------------------------------------------- rotary


class HfscratchRotaryEmbedding(nn.Module):
    inv_freq: torch.Tensor  # non-persistent: rebuilt by `_init_weights` after meta-device loading

    def __init__(self, config: HfscratchConfig):
        super().__init__()
        self.config = config
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        inv_freq, self.attention_scaling = self.rope_init_fn(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @property
    def rope_init_fn(self) -> Callable:
        return self.compute_default_rope_parameters if self.rope_type == "default" else ROPE_INIT_FUNCTIONS[self.rope_type]

    @staticmethod
    def compute_default_rope_parameters(config: HfscratchConfig, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        base, dim = config.rope_parameters["rope_theta"], config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Angles in fp32 even under autocast: bf16 positions lose precision beyond a few hundred tokens.
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim: int = 1):
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


# ---------------------------------------------------------------------------------------------- MLP


class HfscratchMLP(nn.Module):
    """SwiGLU (`down(act(gate(x)) * up(x))`, Llama) or a plain GELU MLP (`down(act(up(x)))`, GPT-2)."""

    def __init__(self, config: HfscratchConfig):
        super().__init__()
        self.gated = config.mlp_type == "swiglu"
        if self.gated:
            self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.down_proj.is_residual_projection = True
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act_fn(self.up_proj(x)))


# ---------------------------------------------------------------------------------------------- attention


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, kv_heads, seq, dim) -> (batch, kv_heads * n_rep, seq, dim) for GQA/MQA in eager attention."""
    return hidden_states if n_rep == 1 else hidden_states.repeat_interleave(n_rep, dim=1)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask[:, :, :, : key_states.shape[-2]]
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class HfscratchAttention(nn.Module):
    """Causal self-attention; MHA, GQA or MQA through `num_key_value_heads`; optional QK-norm (Qwen3)."""

    def __init__(self, config: HfscratchConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=bias)
        self.o_proj.is_residual_projection = True
        self.qk_norm = config.qk_norm  # read once: config attribute access is slow in the decode loop
        if config.qk_norm:  # per-head RMSNorm on queries and keys before RoPE, named as in Qwen3
            self.q_norm = HfscratchRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = HfscratchRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, cache: Cache | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape)
        key_states = self.k_proj(hidden_states).view(hidden_shape)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if self.qk_norm:
            query_states, key_states = self.q_norm(query_states), self.k_norm(key_states)
        query_states, key_states = query_states.transpose(1, 2), key_states.transpose(1, 2)
        if position_embeddings is not None:  # None with learned absolute positions
            cos, sin = position_embeddings
            query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if cache is not None:  # kwargs: the paged cache of continuous batching reads and fills them (as Llama)
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        dropout = self.attention_dropout if self.training else 0.0
        attn_output, attn_weights = attention_interface(
            self, query_states, key_states, value_states, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs
        )
        attn_output = self.o_proj(attn_output.reshape(*input_shape, -1).contiguous())
        return attn_output, attn_weights


# ---------------------------------------------------------------------------------------------- block


class HfscratchDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: HfscratchConfig, layer_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = HfscratchAttention(config, layer_idx)
        self.mlp = HfscratchMLP(config)
        self.input_layernorm = make_norm(config, config.hidden_size)
        self.post_attention_layernorm = make_norm(config, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                use_cache: bool | None = False, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask, cache,
            position_ids=position_ids, use_cache=use_cache, **kwargs,
        )
        hidden_states = residual + hidden_states
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


# ---------------------------------------------------------------------------------------------- model


class HfscratchPreTrainedModel(PreTrainedModel):
    config_class = HfscratchConfig
    config: HfscratchConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HfscratchDecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": HfscratchDecoderLayer, "attentions": HfscratchAttention}

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # normal(0, initializer_range) for Linear/Embedding, ones for norms
        std = self.config.initializer_range
        if getattr(module, "is_residual_projection", False) and self.config.scale_residual_init:
            # Two residual branches per block: 1/sqrt(2 * layers) keeps the stream's variance flat with depth (GPT-2).
            init.normal_(module.weight, mean=0.0, std=std / (2 * self.config.num_hidden_layers) ** 0.5)
        elif isinstance(module, HfscratchRotaryEmbedding):
            # non-persistent buffer: after `from_pretrained` on the meta device it holds garbage, so recompute it
            inv_freq, _ = module.rope_init_fn(module.config)
            init.copy_(module.inv_freq, inv_freq)
            init.copy_(module.original_inv_freq, inv_freq)


class HfscratchModel(HfscratchPreTrainedModel):
    def __init__(self, config: HfscratchConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        if config.position_embedding_type == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        else:
            self.rotary_emb = HfscratchRotaryEmbedding(config)
        self.layers = nn.ModuleList([HfscratchDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = make_norm(config, config.hidden_size)
        self.gradient_checkpointing = False
        self.post_init()

    @accepts_past_key_values
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        caller_cache = cache
        # A cache under gradient checkpointing would be written again when the backward pass replays each layer.
        if use_cache and cache is None and not (self.gradient_checkpointing and self.training):
            cache = DynamicCache(config=self.config)
        # No mask, positions or cache from the caller: plain causal attention, which SDPA does itself (is_causal,
        # no repeat_kv). transformers sees that too, except under torch.compile before torch 2.14, where it always
        # builds a (batch, 1, seq, seq) mask and CPU attention runs ~20 % slower.
        plain_causal = attention_mask is None and position_ids is None and caller_cache is None
        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen).unsqueeze(0)

        # With no attention_mask and restarting position_ids, this mask keeps packed documents apart. The mask
        # builder only looks for packing when it gets no cache, so a cache we just created (empty) is not passed.
        # The cache goes in by position: its keyword is `cache` from transformers 5.24, `past_key_values` before.
        causal_mask = None if plain_causal and self.config._attn_implementation == "sdpa" else create_causal_mask(
            self.config, inputs_embeds, attention_mask, caller_cache, position_ids=position_ids)
        hidden_states = inputs_embeds
        position_embeddings = None
        if self.config.position_embedding_type == "learned":
            # Left padding can give position -1 style fillers; clamp so pad slots still index the table.
            hidden_states = hidden_states + self.embed_positions(position_ids.clamp(min=0))
        else:
            position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)

        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(
                hidden_states, attention_mask=causal_mask, position_embeddings=position_embeddings,
                position_ids=position_ids, cache=cache, use_cache=use_cache, **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), **{CACHE_FIELD: cache})


# ---------------------------------------------------------------------------------------------- loss


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against `labels`, a few hundred rows at a time.

    Written by hand because the plain path is the slowest part of a small model's step: it builds the
    (tokens x vocab) logits, an fp32 copy, log-softmax, a zero-filled gradient and its backward, five passes
    over the largest tensor of the step. Here each chunk's logits stay in cache and turn into their gradient
    (softmax - one-hot) at once, so backward is a multiply. Same GEMMs and math as `F.cross_entropy`. Logits are
    built transposed, weight @ chunk.T (vocab x rows): MKL runs that ~150 GFLOP/s against ~110 for chunk @ weight.T.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, compute_dtype, ignore_index, grad_enabled):
        h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        want_h, want_w = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None
        total = torch.zeros((), device=h.device, dtype=torch.float32)
        rows = max(16, 2**21 // weight.shape[0])  # ~8 MB of fp32 logits per chunk
        for start in range(0, h.shape[0], rows):
            h_chunk, label_chunk = h[start : start + rows], labels[start : start + rows]
            logits = (w @ h_chunk.T).float()  # (vocab, rows)
            valid = label_chunk != ignore_index
            target = label_chunk.masked_fill(~valid, 0)[None, :]
            target_logit = logits.gather(0, target)[0]
            col_max = logits.amax(dim=0, keepdim=True)
            exp = logits.sub_(col_max).exp_()  # in place: one exp pass serves the loss and the gradient
            exp_sum = exp.sum(dim=0, keepdim=True)
            total += ((exp_sum.log() + col_max)[0] - target_logit).mul(valid).sum()
            if want_h or want_w:
                grad_logits = exp.mul_(valid / exp_sum)  # softmax (zero on ignored rows), one pass
                grad_logits.scatter_add_(0, target, -valid[None, :].float())  # minus one-hot on rows that count
                grad_logits = grad_logits.to(compute_dtype)
                if want_h:
                    torch.mm(grad_logits.T, w, out=grad_h[start : start + rows])
                if want_w and compute_dtype == torch.float32:
                    grad_w.addmm_(grad_logits, h_chunk)  # accumulates in place
                elif want_w:  # a bf16 product cannot accumulate into the fp32 sum in place
                    grad_w.add_(grad_logits @ h_chunk)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        # Ours alone: scaled in place, no copy of the largest gradient (a second backward through the same graph
        # is refused by autograd's version check, not computed wrong).
        grad_h, grad_w = ctx.saved_tensors
        grad_h = grad_h.mul_(grad_total).to(ctx.dtypes[0]) if grad_h is not None else None
        grad_w = grad_w.mul_(grad_total).to(ctx.dtypes[1]) if grad_w is not None else None
        return grad_h, grad_w, None, None, None, None


def chunked_causal_lm_loss(hidden_states, weight, labels, num_items_in_batch=None, ignore_index=-100, shift_labels=None):
    """What `ForCausalLMLoss(lm_head(hidden_states), labels)` returns, without materializing the logits."""
    if shift_labels is None:
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    shift_labels = shift_labels.reshape(-1).to(hidden_states.device)
    device_type = hidden_states.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden_states.dtype
    flat_hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    with torch.autocast(device_type, enabled=False):  # (no gradients are formed under no_grad, e.g. in eval)
        total = ChunkedLinearCrossEntropy.apply(flat_hidden, weight, shift_labels, dtype, ignore_index, torch.is_grad_enabled())
    if num_items_in_batch is None:
        num_items_in_batch = (shift_labels != ignore_index).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


# ---------------------------------------------------------------------------------------------- causal LM


class HfscratchForCausalLM(HfscratchPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}
    lean_decoding = True  # False: `generate` always runs transformers' own per-token loop (see lean decoding below)
    compile_decoding_after: int | None = 8192  # lean steps of one kind before that step is compiled; None: never

    def __init__(self, config: HfscratchConfig):
        super().__init__(config)
        self.model = HfscratchModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _lm_head_is_plain(self) -> bool:
        # The chunked loss reads lm_head.weight directly: only when no wrapper owns it (a tensor-parallel
        # DTensor, a ZeRO-3 partition gathered by module hooks, a PEFT layer); otherwise the plain path runs.
        head = self.lm_head
        plain_weight = type(head.weight) in (nn.Parameter, torch.Tensor) and not hasattr(head.weight, "ds_id")
        return type(head) is nn.Linear and plain_weight and not head._forward_pre_hooks

    @accepts_past_key_values
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        skip_logits: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""skip_logits: with `labels`, compute the loss chunk by chunk without building the logits (returned as
        None): faster and far lighter for training loops that only need the loss."""
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs,
        )
        hidden_states, cache_out = outputs.last_hidden_state, {CACHE_FIELD: getattr(outputs, CACHE_FIELD)}
        if skip_logits and labels is not None and self._lm_head_is_plain():
            loss = chunked_causal_lm_loss(hidden_states, self.lm_head.weight, labels, kwargs.get("num_items_in_batch"),
                                          shift_labels=kwargs.get("shift_labels"))
            return CausalLMOutputWithPast(loss=loss, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
                                          **cache_out)
        # Generation only needs the last position: skip the (vocab x seq) projection for the rest.
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            # `num_items_in_batch` in kwargs makes the loss a token-weighted sum across accumulated micro-batches.
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                      attentions=outputs.attentions, **cache_out)

    def _sample(self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
                streamer=None, **model_kwargs):
        # `generate` validates the arguments, builds the logits processors and stopping criteria, then runs this
        # loop for greedy search and sampling. Where nothing beyond tokens is asked for, the lean loop below runs it
        # with the same processors, criteria and token choice; everything else takes transformers' own loop.
        if self.lean_decoding and lean_decoding_applies(self, generation_config, synced_gpus, model_kwargs):
            return lean_sample(self, input_ids, logits_processor, stopping_criteria, generation_config, streamer,
                               model_kwargs.get("attention_mask"), model_kwargs.get("position_ids"))
        return super()._sample(input_ids, logits_processor, stopping_criteria, generation_config,
                               synced_gpus=synced_gpus, streamer=streamer, **model_kwargs)


# `generate` calls inspect.signature(model.forward) at every decoding step for models whose code travels with the
# checkpoint (auto_map / trust_remote_code, as here): 39 us a token, 5-9 us with this precomputed one.
HfscratchForCausalLM.forward.__signature__ = inspect.signature(HfscratchForCausalLM.forward)


# ---------------------------------------------------------------------------------------------- lean decoding

# A small model spends almost all of a `generate` step outside its own arithmetic: in `GenerationMixin`'s per-token
# bookkeeping, module calls, a cache that grows by concatenation, masks and rotary angles rebuilt every token (about
# 2.6 ms a token for a 6.5M-parameter model on 2 CPU cores, against ~0.1 ms of matrix math). For greedy search and
# sampling the loop below replaces that: the decoder block's math written out once more on the modules' own
# forward functions (so LoRA layers still apply), keys and values in buffers sized once per call, angles built once
# per call. Token choice is `GenerationMixin._sample`'s: the same float32 scores through the same logits processors
# and stopping criteria, then argmax or one multinomial draw. Tests hold it to that path's tokens.
# Once the process has decoded `compile_decoding_after` steps of one kind (model shape, batch, buffer size, dtype)
# this way, that one-token step is compiled with `torch.compile` (one fused graph a step instead of a dozen
# dispatched ops per layer): decoding that recurs for long (RL rollouts, a full lm-eval run) pays the compile
# (seconds to a minute) once; short scripts, tests and one-off shapes such as a last, smaller batch never do.
# A compiled one-row fp32 step on CPU computes its linear layers as `streamed_projection`s (weight-read bound).
LEAN_MODEL_KWARGS = {"attention_mask", "position_ids", "logits_to_keep", "use_cache", "cache", "past_key_values",
                     "cache_position"}
MAX_DECODE_GRAPHS = 6  # compiled step kinds per process: each costs seconds to a minute of compiling and its kernels


def lean_decoding_applies(model: HfscratchForCausalLM, generation_config, synced_gpus: bool, model_kwargs: dict) -> bool:
    """True when the lean loop gives what `GenerationMixin._sample` gives: tokens only (no scores or states
    returned), a fresh cache, SDPA attention, no attention dropout, unsharded weights and no module hooks (FSDP,
    ZeRO-3, device maps and TP work through hooks or DTensors, which the lean loop would bypass). Gradient
    checkpointing does not matter: it only changes how blocks run under autograd, and decoding runs without."""
    cache = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
    fresh_cache = cache is None or (cache.get_seq_length() == 0 and not getattr(cache, "_is_user_defined", False))
    modules = list(model.modules())
    return (
        model.config._attn_implementation == "sdpa" and model_kwargs.get("use_cache", True) is not False
        and fresh_cache and set(model_kwargs) <= LEAN_MODEL_KWARGS and not synced_gpus
        and not generation_config.return_dict_in_generate and generation_config.max_length is not None
        and getattr(generation_config, "prefill_chunk_size", None) is None
        and not getattr(generation_config, "is_assistant", False)
        and not (model.training and model.config.attention_dropout > 0)
        and not any(m._forward_pre_hooks or m._forward_hooks for m in modules)
        and all(type(p) in (nn.Parameter, torch.Tensor) for p in model.parameters())
    )


def lean_forward(parts: tuple, tokens, slots, attend: int, real, positions, cos, signed_sin, keys: list,
                 values: list) -> torch.Tensor:
    """Runs `tokens` (batch, n) into cache slots `slots` (n,) and returns the last position's logits. Queries attend
    to the first `attend` slots; `real` (batch, 1, 1, slots) marks the keys that are not padding; `keys`/`values`
    hold one (batch, kv heads, slots, head dim) buffer per layer, filled in place. The compiled step attends to every
    slot (masked), so its shapes depend only on the batch and the buffer size: one graph serves every step of every
    call of that size. Uncompiled passes attend to the slots filled so far, which is less work."""
    embed, learned_positions, final_norm, head, layers, head_dim, scaling, gqa, half = parts
    batch, n = tokens.shape
    hidden = embed(tokens)
    if learned_positions is not None:
        hidden = hidden + learned_positions(positions.index_select(1, slots))
    else:
        cos, signed_sin = cos.index_select(2, slots), signed_sin.index_select(2, slots)
    # A query sees the real keys up to its own slot, and itself: a left-pad query has no real key before it, and a
    # softmax over no key at all is NaN.
    key_slots = torch.arange(attend, device=tokens.device)
    mask = ((key_slots <= slots[:, None]) & real[..., :attend]) | (key_slots == slots[:, None])
    head_shape = (batch, n, -1, head_dim)
    for i, (in_norm, q_proj, k_proj, v_proj, q_norm, k_norm, o_proj, post_norm, gate, up, down, act) in enumerate(layers):
        x = in_norm(hidden)
        query, key, value = q_proj(x).view(head_shape), k_proj(x).view(head_shape), v_proj(x).view(head_shape)
        if q_norm is not None:
            query, key = q_norm(query), k_norm(key)
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        if learned_positions is None:  # what apply_rotary_pos_emb computes
            query = query * cos + query.roll(half, -1) * signed_sin
            key = key * cos + key.roll(half, -1) * signed_sin
        if keys[i] is None:  # sized on first use, in the dtype the projections give (bf16 under autocast); zeros,
            # because masked slots still meet a zero softmax weight and 0 * NaN would be NaN
            keys[i] = key.new_zeros((*key.shape[:2], real.shape[-1], key.shape[-1]))
            values[i] = value.new_zeros(keys[i].shape)
        keys[i].index_copy_(2, slots, key)
        values[i].index_copy_(2, slots, value)
        attended = nn.functional.scaled_dot_product_attention(query, keys[i][:, :, :attend], values[i][:, :, :attend],
                                                              attn_mask=mask, scale=scaling, enable_gqa=gqa)
        hidden = hidden + o_proj(attended.transpose(1, 2).reshape(batch, n, -1))
        x = post_norm(hidden)
        hidden = hidden + down(act(gate(x)) * up(x) if gate is not None else act(up(x)))
    return head(final_norm(hidden[:, -1:]))[:, -1]


def streamed_projection(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`linear(x)` for a single row, as a product and a sum over the input features. At batch 1 a decoding step is a
    chain of matrix-vector products bound by reading the weights; on CPU the BLAS call reads them at about half the
    memory bandwidth a plain vectorised pass gets (`benchmarks/RESULTS_generate.md`), and inductor compiles this
    form into such a pass. Only for compiled fp32 steps: eager, it would build the whole product in memory."""
    out = (x.unsqueeze(-2) * linear.weight).sum(-1)
    return out if linear.bias is None else out + linear.bias


def input_guards_only(guard_entries) -> list[bool]:
    """A `guard_filter_fn` for torch.compile: keeps the checks on the call's activation and cache tensors (shape,
    strides, dtype) and on global state, drops those on modules, their attributes and weights."""
    return [entry.guard_type == "GLOBAL_STATE" or (
        entry.guard_type == "TENSOR_MATCH" and not isinstance(entry.value, nn.Parameter)) for entry in guard_entries]


@functools.cache
def compiled_lean_forward(kind: tuple) -> Callable:
    """The compiled step of one step kind (see `decode_step_kind`; its device comes first). Each kind compiles its
    own copy of `lean_forward`'s code: dynamo keeps compiled graphs per code object, so each copy holds one graph and
    no guard has to choose between graphs. Before every call dynamo re-checks what the graph assumed about every
    module and weight it reads (0.15-0.35 ms a call on 2 CPU cores, up to a tenth of a 6.5M model's step). Where
    the model is built only from this file's and torch's own modules, the kind fixes all of that (module classes,
    config fields, dtypes, frozen weights), so only the checks on the call's tensors stay; a model with other
    modules (a PEFT LoRA layer has scaling, merge and adapter switches of its own) keeps every guard."""
    device_type, own_modules = kind[0], kind[-1]
    code = lean_forward.__code__.replace(co_name=f"lean_forward_{compiled_lean_forward.cache_info().currsize}")
    step = types.FunctionType(code, lean_forward.__globals__, code.co_name)
    # On CPU the C++ wrapper calls the graph's kernels without a Python line between them; CUDA gets the default.
    options = {"cpp_wrapper": True} if device_type == "cpu" else {}
    if own_modules:
        options["guard_filter_fn"] = input_guards_only
    return torch.compile(step, fullgraph=True, dynamic=False, options=options)


# What fixes a compiled step's graph besides the buffers' shape: a step of another kind is compiled anew.
DECODE_GRAPH_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps", "attention_bias", "mlp_bias",
                       "max_position_embeddings", "position_embedding_type", "norm_type", "mlp_type", "qk_norm",
                       "tie_word_embeddings")
COMPILED_DECODE_GRAPHS: dict[tuple, bool] = {}  # step kind -> whether its compiled graph works
DECODED_STEPS: dict[tuple, int] = {}  # step kind -> one-token steps this process has decoded uncompiled


def decode_step_kind(model: HfscratchForCausalLM, batch: int, size: int, device: torch.device) -> tuple:
    """What fixes a compiled step's graph: the device, the dtype the projections compute in, batch and buffer size,
    train/eval mode, each module's class in module order (a LoRA layer is another graph), each weight's dtype and
    whether it is frozen, the shape-giving config fields, and last whether every module is this file's or torch's."""
    autocast = torch.is_autocast_enabled(device.type)
    dtype = torch.get_autocast_dtype(device.type) if autocast else model.lm_head.weight.dtype
    classes = tuple(type(m) for m in model.modules())
    own_modules = all(c.__module__ == __name__ or c.__module__.startswith(("torch.nn.", "transformers.activations"))
                      for c in set(classes))
    return (device.type, dtype, autocast, batch, size, model.training, classes,
            tuple((p.dtype, p.requires_grad) for p in model.parameters()),
            *(getattr(model.config, name, None) for name in DECODE_GRAPH_FIELDS), own_modules)


class LeanDecoder:
    """The forward passes of one `generate` call. `forward(tokens)` runs `tokens` (batch, n) at the next n
    positions and returns the float32 logits of the last one. `real` (batch, max length) is False at padding."""

    def __init__(self, model: HfscratchForCausalLM, position_ids: torch.Tensor, real: torch.Tensor):
        backbone, config = model.model, model.config
        # Where the step will be compiled, buffers of a power-of-two size, so calls of different lengths share one
        # graph; otherwise just the call's length (up to half the memory of the rounded size).
        size = max(64, 1 << (real.shape[-1] - 1).bit_length())
        self.kind, after = decode_step_kind(model, real.shape[0], size, real.device), model.compile_decoding_after
        known = COMPILED_DECODE_GRAPHS.get(self.kind)
        due = after is not None and DECODED_STEPS.get(self.kind, 0) >= after and known is not False and not (
            known is None and len(COMPILED_DECODE_GRAPHS) >= MAX_DECODE_GRAPHS)
        self.graph = self.kind if due else None  # the compiled step's kind (its device first), or None
        size = size if due else real.shape[-1]
        self.real = nn.functional.pad(real, (0, size - real.shape[-1]))[:, None, None, :]
        self.positions = nn.functional.pad(position_ids, (0, size - position_ids.shape[-1])).clamp(min=0)
        self.cos = self.signed_sin = None
        learned = backbone.embed_positions.forward if config.position_embedding_type == "learned" else None
        half = config.head_dim // 2
        if learned is None:  # every slot's angles at once; dtype/device of the hidden states
            cos, sin = backbone.rotary_emb(backbone.embed_tokens.weight[:1], self.positions)
            # rotate_half(x) * sin == x.roll(half) * sin with the first half of sin negated: the same products
            # (a sign flip is exact), in two ops instead of four.
            self.cos, self.signed_sin = cos[:, None], torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)[:, None]
        self.parts = self.gather_parts(model, learned, streamed=False)
        # The compiled one-row fp32 CPU step computes plain linear layers as `streamed_projection`s.
        device_type, dtype, autocast, batch = self.kind[:4]
        streamed = due and device_type == "cpu" and dtype == torch.float32 and not autocast and batch == 1
        self.step_parts = self.gather_parts(model, learned, streamed=True) if streamed else self.parts
        self.keys: list[torch.Tensor | None] = [None] * config.num_hidden_layers
        self.values: list[torch.Tensor | None] = [None] * config.num_hidden_layers
        self.length = 0

    @staticmethod
    def gather_parts(model: HfscratchForCausalLM, learned, streamed: bool) -> tuple:
        """`lean_forward`'s `parts`: bound forward functions, gathered once (a module call or attribute lookup per
        token costs more than the arithmetic at this size); `streamed`: plain linear layers as
        `streamed_projection`s."""
        backbone, config = model.model, model.config

        def project(linear: nn.Module) -> Callable:
            return functools.partial(streamed_projection, linear) if streamed and type(linear) is nn.Linear \
                else linear.forward

        layers = []
        for layer in backbone.layers[: config.num_hidden_layers]:
            attn, mlp = layer.self_attn, layer.mlp
            layers.append((
                layer.input_layernorm.forward, project(attn.q_proj), project(attn.k_proj), project(attn.v_proj),
                attn.q_norm.forward if attn.qk_norm else None, attn.k_norm.forward if attn.qk_norm else None,
                project(attn.o_proj), layer.post_attention_layernorm.forward,
                project(mlp.gate_proj) if mlp.gated else None, project(mlp.up_proj), project(mlp.down_proj),
                mlp.act_fn,
            ))
        return (backbone.embed_tokens.forward, learned, backbone.norm.forward, project(model.lm_head), tuple(layers),
                config.head_dim, config.head_dim**-0.5, config.num_attention_heads != config.num_key_value_heads,
                config.head_dim // 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        slots = torch.arange(self.length, self.length + tokens.shape[1], device=tokens.device)
        with torch.inference_mode():
            if tokens.shape[1] > 1:  # the prompt: one pass of its own length, never compiled
                logits = lean_forward(self.parts, tokens, slots, self.length + tokens.shape[1], self.real,
                                      self.positions, self.cos, self.signed_sin, self.keys, self.values)
            else:
                logits = self.decode_step(tokens, slots)
        self.length += tokens.shape[1]
        return logits.to(copy=True, dtype=torch.float32)  # a copy made outside: an ordinary tensor for the caller

    def decode_step(self, tokens: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        if self.graph is not None:
            try:
                logits = compiled_lean_forward(self.graph)(
                    self.step_parts, tokens, slots, self.real.shape[-1], self.real, self.positions, self.cos,
                    self.signed_sin, self.keys, self.values)
            except Exception:  # noqa: BLE001 -- compiling failed (no C++ compiler, an op dynamo cannot trace):
                # this kind decodes uncompiled from now on; the uncompiled pass rewrites the same slot.
                COMPILED_DECODE_GRAPHS[self.graph], self.graph = False, None
            else:
                COMPILED_DECODE_GRAPHS[self.graph] = True
                return logits
        return lean_forward(self.parts, tokens, slots, self.length + 1, self.real, self.positions, self.cos,
                            self.signed_sin, self.keys, self.values)


@torch.no_grad()
def lean_sample(model: HfscratchForCausalLM, input_ids: torch.LongTensor, logits_processor, stopping_criteria,
                generation_config, streamer, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None):
    (batch, prompt_length), device = input_ids.shape, input_ids.device
    max_length = generation_config.max_length
    padded = attention_mask is not None and not bool(attention_mask.all())
    if position_ids is None:  # as `generate` derives them: the count of real tokens so far (left padding)
        position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill_(attention_mask == 0, 1) if padded else \
            torch.arange(prompt_length, device=device).expand(batch, -1)
    later = position_ids[:, -1:] + torch.arange(1, max(max_length - prompt_length, 0) + 1, device=device)
    real = torch.ones(batch, max(max_length, prompt_length), dtype=torch.bool, device=device)
    if padded:
        real[:, :prompt_length] = attention_mask.bool()
    decoder = LeanDecoder(model, torch.cat([position_ids, later], dim=-1), real)

    pad_token = generation_config._pad_token_tensor
    stops_on_eos = any(hasattr(criterion, "eos_token_id") for criterion in stopping_criteria)
    # `LogitsProcessorList.__call__` reads every processor's signature at every token (tens of microseconds each)
    # to see whether it wants extra arguments; with none to give it calls `processor(input_ids, scores)`, as here.
    takes_two = all(len(inspect.signature(processor.__call__).parameters) <= 2 for processor in logits_processor)
    processors = list(logits_processor) if takes_two else [logits_processor]
    unfinished = torch.ones(batch, dtype=torch.long, device=device)
    logits = decoder.forward(input_ids)
    while True:
        scores = logits
        for processor in processors:
            scores = processor(input_ids, scores)
        if generation_config.do_sample:
            next_tokens = torch.multinomial(nn.functional.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            next_tokens = torch.argmax(scores, dim=-1)
        if stops_on_eos:  # finished rows continue with padding
            next_tokens = next_tokens * unfinished + pad_token.to(device) * (1 - unfinished)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        unfinished = unfinished & ~stopping_criteria(input_ids, None)
        if streamer is not None:
            streamer.put(next_tokens.cpu())
        if unfinished.max() == 0 or input_ids.shape[1] >= max_length:
            break
        logits = decoder.forward(next_tokens[:, None])
    if decoder.graph is None:
        DECODED_STEPS[decoder.kind] = DECODED_STEPS.get(decoder.kind, 0) + input_ids.shape[1] - prompt_length
    if streamer is not None:
        streamer.end()
    return input_ids


# ---------------------------------------------------------------------------------------------- reward model


class HfscratchForSequenceClassification(GenericForSequenceClassification, HfscratchPreTrainedModel):
    """The backbone plus a `score` head read at each row's last non-pad token (a reward model when num_labels=1):
    transformers' generic head, the one Llama uses, so the forward follows the installed transformers."""

    def __init__(self, config: HfscratchConfig):
        # Not the generic __init__: it builds the backbone through AutoModel, which remote-code loading (no
        # hfscratch installed, so no Auto registration) cannot resolve.
        HfscratchPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = HfscratchModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()


__all__ = ["HfscratchForCausalLM", "HfscratchForSequenceClassification", "HfscratchModel", "HfscratchPreTrainedModel"]
