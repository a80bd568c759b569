"""HuggingFace classes for ModernALBERT (written by tools/convert_to_hf.py; loaded with trust_remote_code).

The encoder is the project's own code (modernalbert_*.py, copied beside this file), so the HF model
computes exactly what was trained: one weight set per recursive group, applied G times, MoL experts
routed per token. Padded [B, S] batches are unpadded to the model's flat token stream with
``cu_seqlens`` and padded back. Auxiliary routing losses are not part of these outputs.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput

from .configuration_modernalbert import ModernAlbertConfig
from .modernalbert_classification import ClassificationHead, classification_loss, pool
from .modernalbert_native import MLMHead, ModernAlbertModel as NativeEncoder, tied_logits


def unpad(input_ids, attention_mask):
    """[B, S] ids + mask → flat ids [T], cu_seqlens [B+1] (int32), max_seqlen, flat index [T] into B·S."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    mask = attention_mask.bool()
    lens = mask.sum(dim=1)
    index = mask.flatten().nonzero().squeeze(1)
    cu = F.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
    return input_ids.flatten()[index], cu, int(lens.max()) if len(lens) else 0, index


def repad(x_T, index, batch, seqlen):
    out = x_T.new_zeros(batch * seqlen, *x_T.shape[1:])
    out[index] = x_T
    return out.view(batch, seqlen, *x_T.shape[1:])


class ModernAlbertPreTrainedModel(PreTrainedModel):
    config_class = ModernAlbertConfig
    base_model_prefix = "modernalbert"
    _no_split_modules = ["Block"]
    _supports_sdpa = True
    # One checkpoint holds the encoder, the MLM head and (a fine-tuned classifier's export) the classifier:
    # the heads a class does not have are expected leftovers, not a load report's UNEXPECTED keys.
    _keys_to_ignore_on_load_unexpected = [r"^head\.", r"^decoder_bias$", r"^classifier\."]

    def _init_weights(self, module):
        std = self.config.init_std
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)

    def _encode(self, input_ids, attention_mask, output_hidden_states):
        ids_T, cu, max_len, index = unpad(input_ids, attention_mask)
        h_TD, hidden = self.model(ids_T, cu, max_len, bool(output_hidden_states))
        return h_TD, hidden, index


class ModernAlbertModel(ModernAlbertPreTrainedModel):
    def __init__(self, config: ModernAlbertConfig):
        super().__init__(config)
        self.model = NativeEncoder(config.native())
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embeddings.tok_embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings.tok_embeddings = value

    def forward(self, input_ids, attention_mask=None, output_hidden_states=None, return_dict=None, **kwargs):
        B, S = input_ids.shape
        h_TD, hidden, index = self._encode(input_ids, attention_mask, output_hidden_states)
        states = tuple(repad(h, index, B, S) for h in hidden) if output_hidden_states else None
        return BaseModelOutput(last_hidden_state=repad(h_TD, index, B, S), hidden_states=states)


class ModernAlbertForMaskedLM(ModernAlbertPreTrainedModel):
    """The decoder is tied to the factorised embedding by construction (no separate weight)."""

    def __init__(self, config: ModernAlbertConfig):
        super().__init__(config)
        native = config.native()
        self.model = NativeEncoder(native)
        self.head = MLMHead(native)
        self.decoder_bias = nn.Parameter(torch.zeros(native.vocab_size))
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embeddings.tok_embeddings

    def forward(
        self, input_ids, attention_mask=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs
    ):
        B, S = input_ids.shape
        h_TD, hidden, index = self._encode(input_ids, attention_mask, output_hidden_states)
        logits = repad(tied_logits(self.model.embeddings, self.head, self.decoder_bias, h_TD), index, B, S)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1), ignore_index=-100)
        states = tuple(repad(h, index, B, S) for h in hidden) if output_hidden_states else None
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=states)


class ModernAlbertForSequenceClassification(ModernAlbertPreTrainedModel):
    """The project's ``ClassificationHead`` (modernalbert_classification.py) on [CLS] or mean pooling, on the
    unpadded tokens: the same logits as the native classifier. MSE when num_labels == 1 (regression)."""

    def __init__(self, config: ModernAlbertConfig):
        super().__init__(config)
        native = config.native()
        self.num_labels = config.num_labels
        self.model = NativeEncoder(native)
        self.classifier = ClassificationHead(
            native.hidden_size, config.num_labels, native.norm_eps, config.classifier_dropout
        )
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embeddings.tok_embeddings

    def forward(
        self, input_ids, attention_mask=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs
    ):
        B, S = input_ids.shape
        ids_T, cu, max_len, index = unpad(input_ids, attention_mask)
        h_TD, hidden = self.model(ids_T, cu, max_len, bool(output_hidden_states))
        logits = self.classifier(pool(h_TD, cu, self.config.classifier_pooling))
        loss = classification_loss(logits, labels) if labels is not None else None
        states = tuple(repad(h, index, B, S) for h in hidden) if output_hidden_states else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=states)
