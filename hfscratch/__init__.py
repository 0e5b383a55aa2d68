"""hfscratch: build, train, align, evaluate and publish your own LLM from scratch as native HF objects.

Importing the package registers the model with the Auto classes; `register_for_auto_class` makes `save_pretrained`
copy the modeling files and write `auto_map`, so a saved folder also loads elsewhere with `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .configuration_hfscratch import HfscratchConfig
from .modeling_hfscratch import (
    HfscratchForCausalLM,
    HfscratchForSequenceClassification,
    HfscratchModel,
    HfscratchPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(HfscratchConfig.model_type, HfscratchConfig, exist_ok=True)
AutoModel.register(HfscratchConfig, HfscratchModel, exist_ok=True)
AutoModelForCausalLM.register(HfscratchConfig, HfscratchForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(HfscratchConfig, HfscratchForSequenceClassification, exist_ok=True)
HfscratchConfig.register_for_auto_class()
HfscratchModel.register_for_auto_class("AutoModel")
HfscratchForCausalLM.register_for_auto_class("AutoModelForCausalLM")
HfscratchForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = ["HfscratchConfig", "HfscratchForCausalLM", "HfscratchForSequenceClassification", "HfscratchModel",
           "HfscratchPreTrainedModel", "__version__"]
