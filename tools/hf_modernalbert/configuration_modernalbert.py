"""HuggingFace config for ModernALBERT (written by tools/convert_to_hf.py; loaded with trust_remote_code).

The model fields are those of the project's ``ModelConfig`` (modernalbert_config.py, copied beside
this file), stored flat in config.json; ``native()`` rebuilds and validates it.
"""

import dataclasses

from transformers import PretrainedConfig

from .modernalbert_config import ModelConfig

NATIVE_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


class ModernAlbertConfig(PretrainedConfig):
    model_type = "modernalbert"
    attribute_map = {"num_attention_heads": "num_heads"}

    def __init__(
        self,
        pad_token_id=0,
        cls_token_id=2,
        sep_token_id=3,
        mask_token_id=4,
        classifier_pooling="cls",
        classifier_dropout=0.0,
        **kwargs,
    ):
        defaults = dataclasses.asdict(ModelConfig())
        for name in NATIVE_FIELDS:
            setattr(self, name, kwargs.pop(name, defaults[name]))
        self.num_hidden_layers = self.num_groups * self.group_depth
        kwargs.pop("num_hidden_layers", None)
        self.cls_token_id, self.sep_token_id, self.mask_token_id = cls_token_id, sep_token_id, mask_token_id
        self.classifier_pooling, self.classifier_dropout = classifier_pooling, classifier_dropout
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    def native(self) -> ModelConfig:
        return ModelConfig.from_dict({name: getattr(self, name) for name in NATIVE_FIELDS})
