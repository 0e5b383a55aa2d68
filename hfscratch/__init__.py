"""hfscratch: build, train, align, evaluate and publish your own LLM from scratch as native HF objects.

Importing the package registers the model with the Auto classes; `register_for_auto_class` makes `save_pretrained`
copy the modeling files and write `auto_map`, so a saved folder also loads elsewhere with `trust_remote_code=True`.
"""

import logging


def _drop_torchao_import_notes(record: logging.LogRecord) -> bool:
    """torchao (the fp8 extra) logs a warning for each CUDA extension a CPU build cannot load, and registering its
    enums makes torch log a deprecation note, whenever it is imported; transformers imports it with its quantizers
    (any model load) once it is installed. Neither concerns what runs here, and a normal run prints no warnings: drop
    just those records, before transformers is imported (filters, not levels: torch resets its loggers' levels)."""
    message = str(record.msg)
    return not (message.startswith("Failed to load") or "is an Enum subclass and is now natively supported" in message)


logging.getLogger("torchao").addFilter(_drop_torchao_import_notes)
logging.getLogger("torch.utils._pytree").addFilter(_drop_torchao_import_notes)

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: E402

from .configuration_hfscratch import HfscratchConfig  # noqa: E402
from .modeling_hfscratch import (  # noqa: E402
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
