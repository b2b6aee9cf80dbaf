"""Qwen2 / Qwen2.5 and Qwen3 (dense): Hugging Face config and tensor names.

A Llama with two switches: Qwen2 has biases on the query, key and value projections (`qkv_bias`), Qwen3
none but an RMSNorm over each query and key head before RoPE (`qk_norm`) and a head width apart from
hidden_size / heads. Their tokenizers add no begin-of-text (rows start with the text; `Tokenizer.adds_bos`)
and their chat template is ChatML. Sliding-window layers (`use_sliding_window`, off in every released
checkpoint) follow config.json's layer_types.
"""
from __future__ import annotations

from collections.abc import Mapping

from instruct_jax.models.decoder import DecoderConfig
from instruct_jax.models.families import base, llama
from instruct_jax.models.families.llama import (  # noqa: F401 (a Llama's)
    LORA_NAMES, PEFT_TASK_TYPE, ROW_FORMAT, ignorable, tensor_maps, token_ids)

MODEL_TYPES = ("qwen2", "qwen3")
ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen3ForCausalLM")
KIND = "decoder"


def default_chat_format(tokenizer) -> str:
  """ChatML, Qwen's chat layout, for a checkpoint whose tokenizer has no chat template (a chat run's default)."""
  del tokenizer
  return "chatml"

_FIELDS = llama.COMMON_FIELDS + ("hidden_act", "max_window_layers", "attention_bias", "use_mrope")


def config_from_hf(hf: Mapping, names: set[str], where: str, *, allow_unknown_fields: bool = False,
                   **overrides) -> DecoderConfig:
  """DecoderConfig for a Qwen2 / Qwen3 config.json whose checkpoint holds tensors `names`."""
  base.check_fields(hf, _FIELDS, where, allow_unknown_fields, architectures=ARCHITECTURES)
  # Qwen3's attention_bias would also bias o_proj, which the decoder does not have.
  llama.refuse(hf, where, hidden_act=("silu",), use_mrope=(False, None), attention_bias=(False, None))
  fields = llama.decoder_fields(hf, names, where)
  qwen3 = hf.get("model_type") == "qwen3"
  fields.update(llama.window_fields(hf, fields["num_layers"], where), family=hf["model_type"], qkv_bias=not qwen3,
                qk_norm=qwen3)
  return DecoderConfig(**{**fields, **overrides})


def hf_config(cfg: DecoderConfig, base_config: Mapping | None, dtype_name: str,
              ids: Mapping | None = None) -> dict:
  """A config.json that transformers reads as this model."""
  model_type = "qwen3" if cfg.family == "qwen3" else "qwen2"
  out = llama.common_hf_config(cfg, base_config, dtype_name, ids,
                               {"bos_token_id": None, "eos_token_id": None, "max_position_embeddings": 32768})
  out.update(architectures=["Qwen3ForCausalLM" if model_type == "qwen3" else "Qwen2ForCausalLM"],
             model_type=model_type, hidden_act="silu", use_sliding_window=cfg.sliding_window is not None,
             sliding_window=cfg.sliding_window, max_window_layers=cfg.num_layers)
  if cfg.sliding_window is not None and cfg.layer_types is None:
    out["layer_types"] = ["sliding_attention"] * cfg.num_layers
  if model_type == "qwen3":
    out["attention_bias"] = False
  return out
