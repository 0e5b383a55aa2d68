"""Hub round trip over real HTTP: push with the real huggingface_hub client to a local Hub look-alike
(tests/hub_server.py), load back with transformers, with and without hfscratch importable.

The client runs with HF_HUB_DISABLE_XET=1 so uploads take the classic LFS path the fixture speaks.
"""

import copy
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from hfscratch import HfscratchForCausalLM
from hfscratch.errors import CheckpointError, HubError
from tests.helpers import tiny_config
from tests.hub_server import FakeHub

TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}
TEXT = "ROMEO: But soft, what light through yonder window breaks?"


def save_model_folder(path, tokenizer, seed: int, **overrides):
    torch.manual_seed(seed)
    model = HfscratchForCausalLM(tiny_config(tokenizer, **overrides)).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_tokenizer):
    from hfscratch.tokenizer import ensure_chat_template

    return ensure_chat_template(copy.deepcopy(tiny_tokenizer))


@pytest.fixture(scope="module")
def folders(tmp_path_factory, chat_tokenizer):
    root = tmp_path_factory.mktemp("models")
    main = save_model_folder(root / "main", chat_tokenizer, seed=0)
    step10 = save_model_folder(root / "step10", chat_tokenizer, seed=1)
    (root / "main" / "training_args.bin").write_bytes(b"\x80\x04pickle")  # must never be uploaded
    return {"root": root, "main": root / "main", "step10": root / "step10", "models": {"main": main, "step10": step10}}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with FakeHub(tmp_path_factory.mktemp("hub"), tokens=TOKENS) as server:
        yield server


@pytest.fixture
def hub_env(hub, monkeypatch, tmp_path):
    """What a user gets by exporting HF_ENDPOINT etc. before starting Python (constants are read at import)."""
    from huggingface_hub import constants

    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
           "HFSCRATCH_HUB_RETRIES": "2", "HFSCRATCH_HUB_BACKOFF": "0.01", "HF_HOME": str(tmp_path / "hf_home")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    return env


def repo_files(hub, repo_id, revision="main"):
    repo = hub.repos[repo_id]
    return set(repo.resolve(revision).files)


# Runs with `python -I` (no cwd, no user site) and a meta-path finder that refuses `hfscratch`, so the
# editable install cannot leak in: the model can only come from the repo's remote code.
NO_HFSCRATCH = textwrap.dedent(
    """
    import sys
    class BlockHfscratch:
        def find_spec(self, name, path=None, target=None):
            if name == "hfscratch" or name.startswith("hfscratch."):
                raise ImportError("hfscratch is blocked in this test")
            return None
    sys.meta_path.insert(0, BlockHfscratch())
    try:
        import hfscratch
        raise SystemExit("hfscratch was importable")
    except ImportError:
        pass
    import json, torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out, text = sys.argv[1], sys.argv[2]
    results, info = {}, {}
    for revision in ("main", "step-000010"):
        model = AutoModelForCausalLM.from_pretrained("alice/tiny", revision=revision, trust_remote_code=True).eval()
        tokenizer = AutoTokenizer.from_pretrained("alice/tiny", revision=revision)
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            results[revision] = model(ids).logits[0].contiguous()
        results[revision + "/ids"] = ids[0].contiguous()
        info[revision] = type(model).__module__
    assert "hfscratch" not in sys.modules
    save_file(results, out + ".safetensors")
    json.dump(info, open(out + ".json", "w"))
    """
)


def test_push_then_load_without_hfscratch_bit_for_bit(hub, hub_env, folders, chat_tokenizer, tmp_path):
    from hfscratch.hub import push_checkpoint, push_folder

    info = push_folder(folders["main"], "alice/tiny", token="tok-alice")
    assert info.oid == hub.repos["alice/tiny"].branches["main"]
    future = push_checkpoint(folders["step10"], "alice/tiny", step=10, tokens_seen=5120, token="tok-alice")
    future.result(timeout=60)
    repo = hub.repos["alice/tiny"]
    assert set(repo.branches) == {"main", "step-000010"}
    assert "5,120 tokens" in repo.commits[repo.branches["step-000010"]].message
    files = repo_files(hub, "alice/tiny")
    assert {"config.json", "model.safetensors", "configuration_hfscratch.py", "modeling_hfscratch.py",
            "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md"} <= files
    assert "training_args.bin" not in files  # pickles never leave the machine
    assert repo.resolve("main").files["model.safetensors"].kind == "lfs"  # went through LFS batch + PUT + verify
    assert hub.count("PUT", "/_lfs/") >= 2 and hub.count("POST", "/verify") >= 2

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_TOKEN")}
    env.update(hub_env)
    out = tmp_path / "remote"
    result = subprocess.run([sys.executable, "-I", "-c", NO_HFSCRATCH, str(out), TEXT], env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads(out.with_suffix(".json").read_text())
    assert all(m.startswith("transformers_modules.") for m in modules.values()), modules
    remote = load_file(str(out) + ".safetensors")
    for revision, key in (("main", "main"), ("step-000010", "step10")):
        ids = chat_tokenizer(TEXT, return_tensors="pt").input_ids[0]
        assert torch.equal(remote[revision + "/ids"], ids)
        with torch.no_grad():
            local = folders["models"][key](ids[None]).logits[0]
        assert torch.equal(remote[revision], local), f"{revision}: logits differ after the round trip"
    assert not torch.equal(remote["main"], remote["step-000010"])  # the branch really holds the checkpoint


def test_load_with_hfscratch_installed_uses_registered_class(hub, hub_env, folders, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfscratch.chat import ChatSession, SamplingConfig
    from hfscratch.cli import main
    from hfscratch.hub import push_checkpoint

    if "alice/tiny" not in hub.repos:
        push_checkpoint(folders["step10"], "alice/tiny", step=10, tokens_seen=5120, token="tok-alice", blocking=True)
    model = AutoModelForCausalLM.from_pretrained("alice/tiny", revision="step-000010", cache_dir=tmp_path / "cache").eval()
    tokenizer = AutoTokenizer.from_pretrained("alice/tiny", revision="step-000010", cache_dir=tmp_path / "cache")
    assert type(model) is HfscratchForCausalLM  # registered class, no remote code
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, folders["models"]["step10"](ids).logits)

    # `hfscratch chat ORG/NAME --revision ...` fetches the snapshot through the same endpoint.
    assert main(["chat", "alice/tiny", "--revision", "step-000010", "--prompt", "Hello", "--temperature", "0",
                 "--max-new-tokens", "8", "--device", "cpu"]) == 0
    session = ChatSession(folders["models"]["step10"], tokenizer, sampling=SamplingConfig(temperature=0, max_new_tokens=8))
    assert capsys.readouterr().out == session.reply("Hello") + "\n"


def test_interrupted_upload_can_be_rerun(hub, hub_env, folders, tmp_path):
    from huggingface_hub import hf_hub_download

    from hfscratch.hub import push_folder

    before_puts = hub.count("PUT", "/_lfs/")
    hub.fail_points["commit"] = 10  # the connection dies on every commit: LFS data is up, the commit never lands
    with pytest.raises(HubError, match="re-run") as err:
        push_folder(folders["step10"], "alice/interrupted", token="tok-alice")
    hub.fail_points["commit"] = 0
    assert "\n" not in str(err.value)
    assert "model.safetensors" not in repo_files(hub, "alice/interrupted")
    puts_first_run = hub.count("PUT", "/_lfs/") - before_puts

    push_folder(folders["step10"], "alice/interrupted", token="tok-alice")
    assert hub.count("PUT", "/_lfs/") - before_puts == puts_first_run  # nothing uploaded twice
    downloaded = hf_hub_download("alice/interrupted", "model.safetensors", cache_dir=tmp_path / "dl", endpoint=hub.url)
    assert open(downloaded, "rb").read() == (folders["step10"] / "model.safetensors").read_bytes()


def test_folder_without_auto_map_gets_remote_code_in_the_upload(hub, hub_env, folders, tmp_path):
    import shutil

    from huggingface_hub import hf_hub_download

    from hfscratch.hub import push_folder
    from hfscratch.model_card import write_model_card

    bare = tmp_path / "bare"
    shutil.copytree(folders["step10"], bare)
    config = json.loads((bare / "config.json").read_text())
    config.pop("auto_map")
    (bare / "config.json").write_text(json.dumps(config))
    for name in ("configuration_hfscratch.py", "modeling_hfscratch.py"):
        (bare / name).unlink()
    write_model_card(bare)  # written before the repo id was known: snippets say path/to/bare
    push_folder(bare, "alice/bare", token="tok-alice")
    card = open(hf_hub_download("alice/bare", "README.md", cache_dir=tmp_path / "dl", endpoint=hub.url)).read()
    assert 'from_pretrained("alice/bare", trust_remote_code=True)' in card
    uploaded = json.loads(open(hf_hub_download("alice/bare", "config.json", cache_dir=tmp_path / "dl", endpoint=hub.url)).read())
    assert uploaded["auto_map"]["AutoModelForCausalLM"] == "modeling_hfscratch.HfscratchForCausalLM"
    assert {"configuration_hfscratch.py", "modeling_hfscratch.py"} <= repo_files(hub, "alice/bare")
    assert "auto_map" not in json.loads((bare / "config.json").read_text())  # the user's folder is not modified


def test_outdated_modeling_file_is_replaced_in_the_upload_only(hub, hub_env, folders, tmp_path):
    # A folder saved before transformers 5.24 carries a modeling file that ignores the `cache` argument.
    import shutil

    from huggingface_hub import hf_hub_download

    import hfscratch.modeling_hfscratch as installed
    from hfscratch.hub import push_folder

    old = tmp_path / "old"
    shutil.copytree(folders["step10"], old)
    stale = "# saved by an older hfscratch\n" + (old / "modeling_hfscratch.py").read_text()
    (old / "modeling_hfscratch.py").write_text(stale)
    push_folder(old, "alice/old", token="tok-alice")
    uploaded = open(hf_hub_download("alice/old", "modeling_hfscratch.py", cache_dir=tmp_path / "dl", endpoint=hub.url)).read()
    assert uploaded == open(installed.__file__).read()
    assert (old / "modeling_hfscratch.py").read_text() == stale  # the user's folder is not modified


def test_private_repo_auth_errors_are_one_line(hub, hub_env, folders, monkeypatch, capsys):
    from hfscratch.cli import main
    from hfscratch.hub import download_model, push_folder

    push_folder(folders["step10"], "alice/secret", private=True, token="tok-alice")
    with pytest.raises(HubError, match=r"not authorised \(401\)"):
        download_model("alice/secret")  # no token
    # Through the CLI: one line on stderr, exit code 2, no traceback.
    assert main(["chat", "alice/secret", "--prompt", "hi"]) == 2
    assert download_model("alice/secret", token="tok-alice").joinpath("model.safetensors").is_file()
    with pytest.raises(HubError, match=r"forbidden \(403\)"):
        push_folder(folders["step10"], "alice/secret", token="tok-bob")
    push_folder(folders["step10"], "alice/public", token="tok-alice")
    with pytest.raises(HubError, match="already exists and is public"):
        push_folder(folders["step10"], "alice/public", private=True, token="tok-alice")
    with pytest.raises(HubError, match="needs a token"):
        push_folder(folders["step10"], "alice/other", private=True)
    with pytest.raises(HubError, match=r"not found \(404\)"):
        download_model("alice/does-not-exist")

    assert main(["push", str(folders["step10"]), "--repo-id", "alice/cli", "--private"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and "Traceback" not in err
    assert "401" in lines[0] and "needs a token" in lines[1]

    monkeypatch.setenv("HF_TOKEN", "tok-alice")
    assert main(["push", str(folders["step10"]), "--repo-id", "alice/cli", "--revision", "step-000002"]) == 0
    assert "step-000002" in hub.repos["alice/cli"].branches


def test_connection_refused_is_one_line(hub_env, folders, monkeypatch):
    from hfscratch.hub import push_folder

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubError, match="cannot connect") as err:
        push_folder(folders["step10"], "alice/tiny", token="tok-alice")
    assert "\n" not in str(err.value) and "tok-alice" not in str(err.value)


@pytest.mark.parametrize("repo_id", ["bad repo", "alice/name!", "a/b/c", "-alice/x"])
def test_invalid_repo_ids(hub_env, folders, repo_id):
    from hfscratch.hub import push_folder

    with pytest.raises(HubError, match="invalid repo id"):
        push_folder(folders["step10"], repo_id, token="tok-alice")


def test_bad_folders(hub_env, tmp_path, folders):
    from hfscratch.hub import push_folder

    with pytest.raises(CheckpointError, match="does not exist"):
        push_folder(tmp_path / "missing", "alice/x", token="tok-alice")
    (tmp_path / "not_model").mkdir()
    (tmp_path / "not_model" / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="no config.json"):
        push_folder(tmp_path / "not_model", "alice/x", token="tok-alice")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((folders["step10"] / "config.json").read_text())
    save_file({"w": torch.zeros(1)}, str(tmp_path / "unused.safetensors"))
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(CheckpointError, match="only pickled weights"):
        push_folder(pickled, "alice/x", token="tok-alice")
    with pytest.raises(HubError, match="invalid branch"):
        push_folder(folders["step10"], "alice/x", token="tok-alice", revision="bad branch name")


def test_pretraining_pushes_checkpoints_and_final(hub, hub_env, tmp_path, monkeypatch, tiny_tokenizer, shakespeare_text):
    """`--push_to_hub`: each checkpoint lands on a step branch, the final model (with its card) on main."""
    from hfscratch.training import DataConfig, ModelConfig, PretrainConfig, TrainConfig, TrainingData, pretrain
    from tests.test_training_loop import TINY_MODEL, shakespeare_splits

    monkeypatch.setenv("HF_TOKEN", "tok-alice")
    train, validation = shakespeare_splits(shakespeare_text, tiny_tokenizer, 64, max_docs=300)
    args = TrainConfig(
        output_dir=str(tmp_path / "run"), max_steps=6, per_device_train_batch_size=4, save_steps=3, keep_last_k=1, eval_steps=0,
        report_to="none", spike_zscore=0.0, sample_max_new_tokens=4, push_to_hub=True, hub_model_id="alice/pretrained",
    )
    pretrain(PretrainConfig(ModelConfig(**TINY_MODEL), DataConfig(block_size=64), args), data=TrainingData(train, validation, tiny_tokenizer))
    from hfscratch.hub import wait_for_pushes

    assert not [r for r in wait_for_pushes(timeout=120) if isinstance(r, Exception)]
    repo = hub.repos["alice/pretrained"]
    assert {"main", "step-000003", "step-000006"} <= set(repo.branches)
    main_files = repo_files(hub, "alice/pretrained")
    assert {"model.safetensors", "modeling_hfscratch.py", "README.md", "tokenizer.json"} <= main_files
    for branch in ("step-000003", "step-000006"):
        assert "model.safetensors" in repo_files(hub, "alice/pretrained", branch)
