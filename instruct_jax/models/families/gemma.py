"""Gemma 2 and Gemma 3 (text): Hugging Face config and tensor names.

Gemma's switches (`models/decoder.py`): embeddings times sqrt(hidden_size), (1 + w) norm scales, norms after
attention and after the MLP as well as before, a GeGLU MLP (tanh GELU), queries scaled by
query_pre_attn_scalar ** -0.5, a tied output layer, and layers of two types: sliding-window ("sliding") and
global ("full"), as config.json's layer_types (or the pattern it implies: Gemma 2 alternates starting with a
sliding layer; Gemma 3 makes every sixth layer global). Gemma 2 soft-caps attention logits (50) and output
logits (30); Gemma 3 instead has q/k norms and a RoPE base of its own for the sliding layers (10,000, unscaled;
the global layers' 1,000,000, linearly scaled by 8 in the 4B and larger models). The tokenizer adds `<bos>`
and the chat template writes it too (`{{ bos_token }}`), so chat rows hold one.
"""
from __future__ import annotations

from collections.abc import Mapping

from instruct_jax.models.decoder import DecoderConfig
from instruct_jax.models.families import base, llama
from instruct_jax.models.families.base import ConversionError
from instruct_jax.models.families.llama import (  # noqa: F401 (a Llama's)
    LORA_NAMES, PEFT_TASK_TYPE, ROW_FORMAT, ignorable, tensor_maps, token_ids)

MODEL_TYPES = ("gemma2", "gemma3_text")
ARCHITECTURES = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")
KIND = "decoder"


def default_chat_format(tokenizer) -> str:
  """Gemma's <start_of_turn> layout, for a checkpoint whose tokenizer has no chat template (a chat run's default)."""
  del tokenizer
  return "gemma"

_FIELDS = llama.COMMON_FIELDS + (
    "hidden_activation", "hidden_act", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
    "attention_bias", "use_bidirectional_attention", "rope_local_base_freq", "sliding_window_pattern",
    "_sliding_window_pattern", "cache_implementation")
_GELU = ("gelu_pytorch_tanh", "gelu_new")
_PATTERN = {"gemma2": 2, "gemma3_text": 6}  # every n-th layer is global
_LOCAL_THETA = 10000.0


def _local_theta(hf: Mapping, where: str) -> float | None:
  """Gemma 3's sliding layers' RoPE base (their RoPE is unscaled); None for Gemma 2 (one base for all layers)."""
  if hf["model_type"] != "gemma3_text":
    return None
  params = hf.get("rope_parameters") or {}
  if "sliding_attention" in params:
    theta, scaling = llama.parse_rope(params["sliding_attention"], _LOCAL_THETA, where + " (sliding_attention)")
    if scaling is not None:
      raise ConversionError(f"{where}: scaled RoPE on the sliding layers is not supported")
    return theta
  return float(hf.get("rope_local_base_freq", _LOCAL_THETA))


def config_from_hf(hf: Mapping, names: set[str], where: str, *, allow_unknown_fields: bool = False,
                   **overrides) -> DecoderConfig:
  """DecoderConfig for a Gemma 2 / Gemma 3 text config.json whose checkpoint holds tensors `names`."""
  base.check_fields(hf, _FIELDS, where, allow_unknown_fields, architectures=ARCHITECTURES)
  llama.refuse(hf, where, hidden_activation=_GELU, hidden_act=_GELU, attention_bias=(False, None),
               use_bidirectional_attention=(False, None))
  gemma3 = hf["model_type"] == "gemma3_text"
  fields = llama.decoder_fields(hf, names, where)
  if not gemma3 and "rope_parameters" not in hf and "rope_theta" not in hf:
    fields["rope_theta"] = 10000.0
  elif gemma3 and "rope_parameters" not in hf and "rope_theta" not in hf:
    fields["rope_theta"] = 1_000_000.0
  pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or _PATTERN[hf["model_type"]]
  fields.update(llama.window_fields(hf, fields["num_layers"], where,
                                    lambda i: "sliding" if (i + 1) % pattern else "full"))
  fields.update(family=hf["model_type"], norm_plus_one=True, sandwich_norms=True, embed_scale=True,
                mlp_activation="gelu", qk_norm=gemma3, query_scale=base.require(hf, "query_pre_attn_scalar", where),
                attn_softcap=hf.get("attn_logit_softcapping"), final_softcap=hf.get("final_logit_softcapping"),
                local_rope_theta=_local_theta(hf, where))
  if fields["layer_types"] is None and fields["sliding_window"] is not None and fields["local_rope_theta"]:
    # every layer slides: the sliding layers' RoPE is the only one
    fields.update(rope_theta=fields["local_rope_theta"], rope_scaling=None, local_rope_theta=None)
  return DecoderConfig(**{**fields, **overrides})


def hf_config(cfg: DecoderConfig, base_config: Mapping | None, dtype_name: str,
              ids: Mapping | None = None) -> dict:
  """A config.json that transformers reads as this model (layer types and Gemma 3's RoPE per layer type in
  transformers 5's fields)."""
  gemma3 = cfg.family == "gemma3_text"
  out = llama.common_hf_config(cfg, base_config, dtype_name, ids,
                               {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
                                "max_position_embeddings": 131072 if gemma3 else 8192})
  out.update(architectures=["Gemma3ForCausalLM" if gemma3 else "Gemma2ForCausalLM"],
             model_type="gemma3_text" if gemma3 else "gemma2", hidden_activation="gelu_pytorch_tanh",
             query_pre_attn_scalar=cfg.query_scale, attn_logit_softcapping=cfg.attn_softcap,
             final_logit_softcapping=cfg.final_softcap, sliding_window=cfg.sliding_window, attention_bias=False,
             layer_types=[f"{t}_attention" for t in (cfg.layer_types or
                                                     ("sliding" if cfg.sliding_window else "full",) * cfg.num_layers)])
  if gemma3:
    out.pop("rope_theta")
    full = llama.rope_config(cfg.rope_theta, cfg.rope_scaling)
    local = cfg.local_rope_theta if cfg.local_rope_theta is not None else cfg.rope_theta
    out["rope_parameters"] = {
        "full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta, **(full["rope_scaling"] or {})},
        "sliding_attention": {"rope_type": "default", "rope_theta": local}}
    out.pop("rope_scaling")
    out["use_bidirectional_attention"] = False
  return out
