"""Model cards: written from the run's facts, readable by huggingface_hub, and `update_model_index`
merges results without touching the prose or the other metadata."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import ModelCard  # noqa: E402
from huggingface_hub.repocard_data import eval_results_to_model_index  # noqa: E402

from hfscratch import HfscratchForCausalLM  # noqa: E402
from hfscratch.errors import CheckpointError, ConfigError  # noqa: E402
from hfscratch.model_card import count_parameters, update_model_index, write_model_card  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

BPB = dict(task_type="text-generation", task_name="Language modelling", dataset_type="tinyshakespeare",
           dataset_name="TinyShakespeare", dataset_split="validation", metric_type="bpb", metric_name="bits per byte",
           metric_value=2.31, source_name="lm-eval")
HELLASWAG = dict(task_type="multiple-choice", task_name="HellaSwag", dataset_type="Rowan/hellaswag",
                 dataset_name="HellaSwag", dataset_split="validation", metric_type="acc_norm", metric_name="acc_norm",
                 metric_value=0.27)


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = HfscratchForCausalLM(tiny_config(None, tie_word_embeddings=False))
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model", model


def loss_curve(path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([4.0, 3.1, 2.7, 2.5])
    fig.savefig(path)
    plt.close(fig)
    return path


def test_card_from_run_facts(model_dir, tmp_path):
    folder, model = model_dir
    assert count_parameters(folder) == sum(p.numel() for p in model.parameters())
    path = write_model_card(
        folder,
        training_config={"learning_rate": 3e-4, "max_steps": 200, "optimizer": {"name": "adamw", "betas": (0.9, 0.95)}},
        metrics={"final_train_loss": 2.48, "eval_results": [BPB]},
        data={"datasets": ["karpathy/tiny_shakespeare"], "train_tokens": 1_234_567},
        loss_curve_png=str(loss_curve(tmp_path / "curve.png")),
        extra={"repo_id": "alice/tiny-shakespeare", "license": "apache-2.0", "hardware": "1x CPU"},
    )
    card = ModelCard.load(path)
    n_params = sum(p.numel() for p in model.parameters())
    assert f"{n_params:,}" in card.text and "GQA" in card.text and "Llama style" in card.text
    assert "1,234,567" in card.text and "learning_rate: 0.0003" in card.text and "2.48" in card.text
    assert "![Training loss curve](loss_curve.png)" in card.text and (folder / "loss_curve.png").is_file()
    assert 'from_pretrained("alice/tiny-shakespeare", trust_remote_code=True)' in card.text
    assert "import hfscratch" in card.text and "1x CPU" in card.text
    assert card.data.datasets == ["karpathy/tiny_shakespeare"] and card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == "text-generation" and "hfscratch" in card.data.tags
    (result,) = card.data.eval_results
    assert (result.metric_type, result.metric_value, result.source_url) == ("bpb", 2.31, "https://github.com/EleutherAI/lm-evaluation-harness")


def test_update_model_index_keeps_prose_and_entries(model_dir):
    folder, _ = model_dir
    path = write_model_card(folder, metrics={"eval_results": [BPB]}, extra={"license": "mit"})
    path.write_text(path.read_text() + "\n## Notes\n\nHand-written notes that must survive.\n")
    before_text = ModelCard.load(path).text

    update_model_index(folder, [HELLASWAG])
    card = ModelCard.load(path)
    assert card.text == before_text
    assert card.data.license == "mit" and card.data.pipeline_tag == "text-generation"
    assert [(r.dataset_type, r.metric_value) for r in card.data.eval_results] == [("tinyshakespeare", 2.31), ("Rowan/hellaswag", 0.27)]

    update_model_index(folder, [dict(HELLASWAG, metric_value=0.31)])  # same task/dataset/metric: replaced, not duplicated
    card = ModelCard.load(path)
    assert [r.metric_value for r in card.data.eval_results] == [2.31, 0.31]
    index = eval_results_to_model_index(card.data.model_name, card.data.eval_results)
    assert len(index[0]["results"]) == 2

    # Regenerating the card (e.g. at the end of a later run) keeps the model-index entries too.
    write_model_card(folder, metrics={"final_train_loss": 1.9})
    assert [r.metric_value for r in ModelCard.load(path).data.eval_results] == [2.31, 0.31]


def test_bad_inputs(model_dir, tmp_path):
    folder, _ = model_dir
    with pytest.raises(ConfigError, match="lacks"):
        update_model_index(folder, [{"task_type": "x"}])
    with pytest.raises(ConfigError, match="unknown keys"):
        update_model_index(folder, [dict(HELLASWAG, score=1)])
    with pytest.raises(ConfigError, match="does not exist"):
        write_model_card(folder, loss_curve_png=str(tmp_path / "missing.png"))
    with pytest.raises(CheckpointError, match="no config.json"):
        write_model_card(tmp_path)
