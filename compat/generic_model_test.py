"""transformers' generic model tests (`ModelTesterMixin`) on hfscratch and on Llama, with one small config.

Not importable from here: `compat/run_transformers_generic_tests.py` copies this file into the `tests/` folder of
the installed transformers version's sdist (renamed to the package `transformers_tests`), next to
`test_modeling_common.py`, and runs pytest on it there. See that script's docstring for what is stubbed.

Both classes get the same tester, the same inputs and the same config values (the defaults of transformers'
`CausalLMModelTester`, tests/causal_lm_tester.py, which the sdist lacks), so any test that hfscratch skips or fails
and Llama does not points at hfscratch. Model-specific defaults that are not in the shared config (hfscratch ties its
embeddings and scales its residual-projection init by default, Llama does not) are left as each model ships them.
"""

import os
import unittest

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel
from transformers.models.auto import modeling_auto
from transformers.testing_utils import require_torch, torch_device

from hfscratch import HfscratchConfig, HfscratchForCausalLM, HfscratchForSequenceClassification
from hfscratch.modeling_hfscratch import HfscratchModel

from .generation.test_utils import GenerationTesterMixin  # an empty stub here: generate tests are not run
from .test_modeling_common import ModelTesterMixin, ids_tensor

# The runner unpacked the tests of this version's sdist: the mixin must come from the transformers under test.
_EXPECTED = os.environ.get("HFSCRATCH_GENERIC_TESTS_TRANSFORMERS")
if _EXPECTED and transformers.__version__ != _EXPECTED:
    raise ImportError(f"these are transformers {_EXPECTED}'s tests but transformers {transformers.__version__} is imported")

# The mixin finds a model's role by class name in transformers' static name tables, which list in-tree models
# only: without these rows the causal LM gets no `labels` in `_prepare_for_class` and the base model is not found
# by the RoPE tests (which then skip). An in-tree model has them; `hfscratch/__init__.py` already registers the
# same classes with the Auto classes. Changed in this test process only.
modeling_auto.MODEL_MAPPING_NAMES.setdefault(HfscratchConfig.model_type, "HfscratchModel")
modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault(HfscratchConfig.model_type, "HfscratchForCausalLM")
modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.setdefault(HfscratchConfig.model_type,
                                                                         "HfscratchForSequenceClassification")


# The small config of transformers' `CausalLMModelTester` (tests/causal_lm_tester.py), passed to both config classes.
SHARED_CONFIG = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=37,
    hidden_act="gelu",
    max_position_embeddings=512,
    initializer_range=0.02,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


class SmallCausalLMModelTester:
    """What `ModelTesterMixin` reads from `self.model_tester`, as transformers' `CausalLMModelTester` provides it."""

    def __init__(self, parent, config_class, base_model_class, causal_lm_class, classifier_class, batch_size=13, seq_length=7,
                 is_training=True, use_input_mask=True, num_labels=3, num_choices=4, type_sequence_label_size=2):
        self.parent = parent
        self.config_class = config_class
        self.base_model_class = base_model_class
        self.causal_lm_class = causal_lm_class
        self.classifier_class = classifier_class
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.use_input_mask = use_input_mask
        self.num_labels = num_labels
        self.num_choices = num_choices
        self.type_sequence_label_size = type_sequence_label_size
        for name, value in SHARED_CONFIG.items():
            setattr(self, name, value)
        self.head_dim = self.hidden_size // self.num_attention_heads

    @property
    def all_model_classes(self):
        return (self.base_model_class, self.causal_lm_class, self.classifier_class)

    def get_config(self):
        return self.config_class(**SHARED_CONFIG)

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_mask = torch.tril(torch.ones_like(input_ids).to(torch_device)) if self.use_input_mask else None
        return self.get_config(), input_ids, input_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, input_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": input_mask}


class _SmallCausalLMTest(ModelTesterMixin, GenerationTesterMixin):
    """Not collected (no TestCase base); the two subclasses below are."""

    config_class = base_model_class = causal_lm_class = classifier_class = None

    def setUp(self):
        self.model_tester = SmallCausalLMModelTester(self, self.config_class, self.base_model_class, self.causal_lm_class,
                                                     self.classifier_class)


@require_torch
class HfscratchGenericModelTest(_SmallCausalLMTest, unittest.TestCase):
    config_class, base_model_class, causal_lm_class = HfscratchConfig, HfscratchModel, HfscratchForCausalLM
    classifier_class = HfscratchForSequenceClassification  # the reward-model head (num_labels from the mixin's inputs)
    all_model_classes = (HfscratchModel, HfscratchForCausalLM, HfscratchForSequenceClassification)


@require_torch
class LlamaGenericModelTest(_SmallCausalLMTest, unittest.TestCase):
    config_class, base_model_class, causal_lm_class = LlamaConfig, LlamaModel, LlamaForCausalLM
    classifier_class = LlamaForSequenceClassification
    all_model_classes = (LlamaModel, LlamaForCausalLM, LlamaForSequenceClassification)
