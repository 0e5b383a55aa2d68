"""`hfscratch export MODEL OUT.gguf --to gguf`: a GGUF file for llama.cpp with the trained BPE in its metadata.

Always: the file read back with `gguf.GGUFReader` (metadata, tokens by id, merges, tensors, the q/k row order
undone exactly) and the refusals. With llama.cpp itself (`pip install llama-cpp-python`, the `llamacpp` extra,
built from its sdist): tokenization equals `tokenizers`' and greedy tokens equal transformers' for several prompts.
"""

import copy
import json

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from hfscratch import HfscratchForCausalLM
from hfscratch.cli import main
from hfscratch.errors import ConfigError
from hfscratch.export import export_gguf, rope_permute
from hfscratch.tokenizer import ensure_chat_template
from tests.helpers import tiny_config

PROMPTS = ["To be, or not to be", "My lord, the king", "What light through yonder window breaks?", "O Romeo"]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tiny_tokenizer):
    tokenizer = ensure_chat_template(copy.deepcopy(tiny_tokenizer))
    folder = tmp_path_factory.mktemp("gguf") / "tiny"
    torch.manual_seed(0)
    model = HfscratchForCausalLM(tiny_config(tokenizer, vocab_size=520, tie_word_embeddings=False)).eval()
    with torch.no_grad():  # random weights favour the role tokens; keep greedy continuations in plain text
        model.lm_head.weight[sorted(set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder))] = 0
        model.lm_head.weight[len(tokenizer):] = 0  # the 5 padding rows of the embedding
        model.lm_head.weight.mul_(8)  # sharper logits: greedy choices are not near-ties between implementations
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gguf_file(model_folder, tmp_path_factory):
    return export_gguf(model_folder, tmp_path_factory.mktemp("out") / "tiny.gguf")


def field(reader, name):
    value = reader.fields[name]
    if len(value.data) == 1:
        part = value.parts[value.data[0]]
        return bytes(part).decode() if value.types[0].name == "STRING" else part.tolist()[0]
    return [bytes(value.parts[i]).decode() for i in value.data]


def test_metadata_tokens_and_tensors_round_trip(model_folder, gguf_file, tiny_tokenizer):
    reader = GGUFReader(gguf_file)
    config = json.loads((model_folder / "config.json").read_text())
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "llama.block_count") == config["num_hidden_layers"]
    assert field(reader, "llama.attention.head_count_kv") == config["num_key_value_heads"]
    assert field(reader, "tokenizer.ggml.model") == "gpt2" and field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = field(reader, "tokenizer.ggml.tokens")
    vocab = {token: index for index, token in enumerate(tokens) if not token.startswith("[PAD")}
    saved = json.loads((model_folder / "tokenizer.json").read_text())
    assert len(tokens) == config["vocab_size"] and vocab == dict(saved["model"]["vocab"], **{
        t["content"]: t["id"] for t in saved["added_tokens"]})
    assert len(field(reader, "tokenizer.ggml.merges")) == len(saved["model"]["merges"])
    assert field(reader, "tokenizer.ggml.eos_token_id") == tiny_tokenizer.eos_token_id

    model = HfscratchForCausalLM.from_pretrained(model_folder)
    tensors = {t.name: np.array(t.data).reshape([int(d) for d in reversed(t.shape)]) for t in reader.tensors}
    assert len(tensors) == 2 + 1 + 9 * config["num_hidden_layers"]  # embed, norm, output + 9 per layer
    layer = model.model.layers[1]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    assert np.array_equal(tensors["token_embd.weight"], model.model.embed_tokens.weight.detach().numpy())
    assert np.array_equal(tensors["blk.1.ffn_down.weight"], layer.mlp.down_proj.weight.detach().numpy())
    q = layer.self_attn.q_proj.weight.detach().numpy()
    k = layer.self_attn.k_proj.weight.detach().numpy()
    assert not np.array_equal(tensors["blk.1.attn_q.weight"], q)  # the rows were reordered for llama.cpp's rope ...
    assert np.array_equal(tensors["blk.1.attn_q.weight"], rope_permute(q, heads))
    assert np.array_equal(tensors["blk.1.attn_k.weight"], rope_permute(k, kv_heads))
    # ... and the reordering is a permutation of whole rows, undone by its inverse
    order = rope_permute(np.arange(q.shape[0])[:, None], heads)[:, 0]
    assert np.array_equal(tensors["blk.1.attn_q.weight"][np.argsort(order)], q)


def test_what_llama_cpp_cannot_run_is_refused(tmp_path, tiny_tokenizer, gguf_file, capsys):
    gpt2_style = tmp_path / "gpt2"
    HfscratchForCausalLM(tiny_config(tiny_tokenizer, position_embedding_type="learned", norm_type="layernorm",
                                     mlp_type="gelu")).save_pretrained(gpt2_style)
    tiny_tokenizer.save_pretrained(gpt2_style)
    with pytest.raises(ConfigError, match="learned absolute positions"):
        export_gguf(gpt2_style, tmp_path / "x.gguf")
    assert main(["export", str(gpt2_style), str(tmp_path / "x.gguf"), "--to", "gguf"]) == 2
    assert main(["export", str(gguf_file.parent), str(gguf_file), "--to", "gguf"]) == 2  # exists: not overwritten
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "Traceback" not in err and "already exists" in err
    assert not (tmp_path / "x.gguf").exists()


def test_llama_cpp_tokenizes_and_decodes_like_transformers(model_folder, gguf_file, shakespeare_text):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama.cpp check needs the llamacpp extra: pip install 'hfscratch[llamacpp]' "
                            "(llama-cpp-python, compiled from its sdist)")
    from hfscratch.loading import load_for_inference

    model, tokenizer = load_for_inference(str(model_folder), device="cpu")
    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=256, n_threads=2, verbose=False)
    sample = shakespeare_text[:4000]
    assert llm.tokenize(sample.encode(), add_bos=False, special=False) == tokenizer(sample, add_special_tokens=False)["input_ids"]
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
        expected = out[0, len(ids):].tolist()
        llm.reset()
        got = []
        for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            got.append(token)
            if len(got) == len(expected):
                break
        assert got == expected, prompt
    llm.close()


def test_tied_embeddings_are_written_once(tmp_path, tiny_tokenizer):
    folder = tmp_path / "tied"
    HfscratchForCausalLM(tiny_config(tiny_tokenizer)).save_pretrained(folder)  # hfscratch ties by default
    tiny_tokenizer.save_pretrained(folder)
    names = {t.name for t in GGUFReader(export_gguf(folder, tmp_path / "tied.gguf")).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names  # llama.cpp reads the embedding
