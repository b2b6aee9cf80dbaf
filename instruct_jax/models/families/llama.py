"""LLaMA / Llama-2 / Llama-3 / Mistral (and SmolLM2, a Llama): Hugging Face config and tensor names.

Also the decoder families' shared parts, which Qwen and Gemma build on: the config fields every decoder
checkpoint has, RoPE settings (transformers 4's rope_theta/rope_scaling and transformers 5's
rope_parameters, per layer type too), per-layer attention types, and the tensor names, which follow the
decoder's switches (`models/decoder.py`): q/k/v biases, q/k norms, norms after attention and the MLP.

instruct_jax applies RoPE in the split-halves layout that Hugging Face LLaMA weights use, so q_proj and
k_proj need no permutation: Linear weights [out, in] are only transposed into einsum-shaped kernels.
RoPE: default, Llama-3 ("llama3") and linear frequency scaling are implemented; other rope types are refused.
Mistral's sliding window (Mistral-7B v0.1: 4096; later Mistral releases set none) becomes the decoder's
`sliding_window`: each token attends to the last `sliding_window` positions, itself included.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

from instruct_jax.models.families import base
from instruct_jax.models.families.base import ConversionError, TensorMap
from instruct_jax.models.decoder import DecoderConfig
from instruct_jax.models.layers import RopeScaling

MODEL_TYPES = ("llama", "mistral")
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
KIND = "decoder"
ROW_FORMAT = "decoder"  # Tokenizer.save_for_hf: [bos] + text where the tokenizer adds a begin-of-text
PEFT_TASK_TYPE = "CAUSAL_LM"


def default_chat_format(tokenizer) -> str:
  """The chat format (templates/chat_formats.yaml) a chat run from a checkpoint whose tokenizer has no chat template
  renders with: Llama-3's header layout where the tokenizer has its <|eot_id|>, ChatML where it has <|im_start|>
  (SmolLM2), else the [INST] layout of Llama-2-chat and Mistral-Instruct."""
  specials = set(tokenizer.special_strings())
  if "<|eot_id|>" in specials:
    return "llama3"
  return "chatml" if "<|im_start|>" in specials else "llama2"
LORA_NAMES = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "o_proj", "wi_0": "gate_proj",
              "wi_1": "up_proj", "wo": "down_proj"}
# Fields of every decoder family's config.json that this code reads or that cannot change the model.
COMMON_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
                 "tie_word_embeddings", "attention_dropout", "max_position_embeddings", "layer_types",
                 "sliding_window", "use_sliding_window")
_FIELDS = COMMON_FIELDS + ("hidden_act", "attention_bias", "mlp_bias", "pretraining_tp")
# Defaults of transformers' LlamaConfig / MistralConfig for fields a config.json may leave out.
_DEFAULT_KV_HEADS = {"mistral": 8}

_PROJECTIONS = {
    ("attention", "query", "kernel"): ("self_attn.q_proj.weight", True, 1),
    ("attention", "key", "kernel"): ("self_attn.k_proj.weight", True, 1),
    ("attention", "value", "kernel"): ("self_attn.v_proj.weight", True, 1),
    ("attention", "out", "kernel"): ("self_attn.o_proj.weight", True, 2),
    ("mlp", "wi_0", "kernel"): ("mlp.gate_proj.weight", True, 1),
    ("mlp", "wi_1", "kernel"): ("mlp.up_proj.weight", True, 1),
    ("mlp", "wo", "kernel"): ("mlp.down_proj.weight", True, 1),
    ("pre_attention_norm", "scale"): ("input_layernorm.weight", False, None),
}


def layer_table(cfg: DecoderConfig) -> dict:
  """{sub-path: (tensor suffix, transpose, split)} of one layer, as the config's switches shape it."""
  table = dict(_PROJECTIONS)
  if cfg.sandwich_norms:  # Gemma: post_attention_layernorm is the attention output's norm
    table.update({("post_attention_norm", "scale"): ("post_attention_layernorm.weight", False, None),
                  ("pre_mlp_norm", "scale"): ("pre_feedforward_layernorm.weight", False, None),
                  ("post_mlp_norm", "scale"): ("post_feedforward_layernorm.weight", False, None)})
  else:
    table[("pre_mlp_norm", "scale")] = ("post_attention_layernorm.weight", False, None)
  if cfg.qkv_bias:
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
      table[("attention", ours, "bias")] = (f"self_attn.{theirs}.bias", False, None)
  if cfg.qk_norm:
    table[("attention", "query_norm", "scale")] = ("self_attn.q_norm.weight", False, None)
    table[("attention", "key_norm", "scale")] = ("self_attn.k_norm.weight", False, None)
  return table


def tensor_maps(cfg: DecoderConfig, hf: Mapping | None = None, names: set[str] | None = None) -> dict:
  """{parameter path: TensorMap} (the names are the same for import and export)."""
  del hf, names
  maps = {("token_embedder", "embedding"): TensorMap(("model.embed_tokens.weight",)),
          ("final_norm", "scale"): TensorMap(("model.norm.weight",), split=None)}
  base.add_layers(maps, ("layers",), cfg.num_layers, cfg.scan_layers, layer_table(cfg), "model.layers.{i}.")
  if not cfg.tie_embeddings:
    maps[("logits_dense", "kernel")] = TensorMap(("lm_head.weight",), transpose=True)
  return maps


def ignorable(name: str) -> bool:
  return name.endswith(".rotary_emb.inv_freq")  # a buffer older checkpoints saved


# ---------------------------------------------------------------- config.json, shared by the decoder families

def parse_rope(params: Mapping, default_theta: float, where: str) -> tuple[float, RopeScaling | None]:
  """(theta, scaling) of one rope_parameters / rope_scaling dict."""
  theta = float(params.get("rope_theta", default_theta))
  kind = params.get("rope_type", params.get("type", "default"))
  if params.get("partial_rotary_factor", 1.0) != 1.0:
    raise ConversionError(f"{where}: partial_rotary_factor={params['partial_rotary_factor']} is not supported")
  if kind == "default":
    return theta, None
  req = lambda f: base.require(params, f, f"{where} rope scaling")
  if kind == "linear":
    return theta, RopeScaling(factor=float(req("factor")), kind="linear")
  if kind == "llama3":
    return theta, RopeScaling(factor=float(req("factor")), low_freq_factor=float(req("low_freq_factor")),
                              high_freq_factor=float(req("high_freq_factor")),
                              original_max_position=int(req("original_max_position_embeddings")))
  raise ConversionError(f"{where}: rope type {kind!r} is not supported; instruct_jax implements 'default', "
                        "'linear' and 'llama3' RoPE")


def rope(hf: Mapping, where: str) -> tuple[float, RopeScaling | None]:
  """(theta, scaling) from transformers 5's rope_parameters or transformers 4's rope_theta/rope_scaling."""
  params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  if "full_attention" in params:  # per layer type (transformers 5): the global layers' settings
    params = dict(params["full_attention"])
  return parse_rope(params, hf.get("rope_theta", 10000.0), where)


def layer_types(hf: Mapping, num_layers: int, where: str, default=None) -> tuple[str, ...] | None:
  """Per-layer "sliding" / "full" from config.json's layer_types (transformers 5), else `default(i)`."""
  types = hf.get("layer_types")
  if types is None:
    return None if default is None else tuple(default(i) for i in range(num_layers))
  names = {"sliding_attention": "sliding", "full_attention": "full"}
  if len(types) != num_layers or set(types) - set(names):
    raise ConversionError(f"{where}: layer_types must give 'sliding_attention' or 'full_attention' for each of the "
                          f"{num_layers} layers, got {types}")
  return tuple(names[t] for t in types)


def window_fields(hf: Mapping, num_layers: int, where: str, default_types=None) -> dict:
  """sliding_window and layer_types (None when every layer is alike)."""
  window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
  types = layer_types(hf, num_layers, where, default_types)
  if window is None or (types is not None and "sliding" not in types):
    return dict(sliding_window=None, layer_types=None)
  if not isinstance(window, int) or window < 1:
    raise ConversionError(f"{where}: sliding_window={window!r}; expected a positive integer or null")
  return dict(sliding_window=window, layer_types=None if types is None or set(types) == {"sliding"} else types)


def decoder_fields(hf: Mapping, names: set[str], where: str) -> dict:
  """DecoderConfig fields every decoder family's config.json gives the same way."""
  req = lambda f: base.require(hf, f, where)
  d_model, heads, num_layers = req("hidden_size"), req("num_attention_heads"), req("num_hidden_layers")
  theta, scaling = rope(hf, where)
  return dict(vocab_size=req("vocab_size"), d_model=d_model, d_ff=req("intermediate_size"), num_heads=heads,
              num_kv_heads=hf.get("num_key_value_heads") or _DEFAULT_KV_HEADS.get(hf.get("model_type"), heads),
              head_dim=hf.get("head_dim") or d_model // heads, num_layers=num_layers, rope_theta=theta,
              rope_scaling=scaling, norm_eps=hf.get("rms_norm_eps", 1e-6),
              tie_embeddings=bool(hf.get("tie_word_embeddings", False)) and "lm_head.weight" not in names)


def refuse(hf: Mapping, where: str, **wanted) -> None:
  """ConversionError for a field whose value the decoder does not implement (`wanted`: field -> allowed values)."""
  for field, allowed in wanted.items():
    value = hf.get(field, allowed[0])
    if value not in allowed:
      raise ConversionError(f"{where}: {field}={json.dumps(value)} is not supported (supported: "
                            f"{', '.join(json.dumps(a) for a in allowed)})")


def config_from_hf(hf: Mapping, names: set[str], where: str, *, allow_unknown_fields: bool = False,
                   **overrides) -> DecoderConfig:
  """DecoderConfig for a Hugging Face LLaMA/Mistral config.json whose checkpoint holds tensors `names`."""
  base.check_fields(hf, _FIELDS, where, allow_unknown_fields, architectures=ARCHITECTURES)
  refuse(hf, where, hidden_act=("silu",), attention_bias=(False, None), mlp_bias=(False, None))
  fields = decoder_fields(hf, names, where)
  family = "mistral" if hf.get("model_type") == "mistral" else "llama"
  fields.update(window_fields(hf, fields["num_layers"], where), family=family)
  return DecoderConfig(**{**fields, **overrides})


def rope_config(theta: float, scaling: RopeScaling | None) -> dict:
  """rope_theta and rope_scaling as transformers 4 writes them (transformers 5 reads them too)."""
  if scaling is None:
    return {"rope_theta": theta, "rope_scaling": None}
  if scaling.kind == "linear":
    return {"rope_theta": theta, "rope_scaling": {"rope_type": "linear", "factor": scaling.factor}}
  return {"rope_theta": theta, "rope_scaling": {
      "rope_type": "llama3", "factor": scaling.factor, "low_freq_factor": scaling.low_freq_factor,
      "high_freq_factor": scaling.high_freq_factor, "original_max_position_embeddings": scaling.original_max_position}}


def common_hf_config(cfg: DecoderConfig, base_config: Mapping | None, dtype_name: str, token_ids: Mapping | None,
                     defaults: Mapping) -> dict:
  """The fields every decoder family's config.json writes alike (`defaults`: for fields neither the base
  config.json nor the tokenizer gives)."""
  base_config = base_config or {}
  kept = {k: v for k, v in base_config.items() if k in base.GENERIC_FIELDS or k == "max_position_embeddings"}
  out = {**defaults, **kept, **(token_ids or {}), "dtype": dtype_name, "torch_dtype": dtype_name,
         "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
         "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
         "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "rms_norm_eps": cfg.norm_eps,
         "tie_word_embeddings": cfg.tie_embeddings, **rope_config(cfg.rope_theta, cfg.rope_scaling)}
  if cfg.layer_types is not None:
    out["layer_types"] = [f"{t}_attention" for t in cfg.layer_types]
  return out


def hf_config(cfg: DecoderConfig, base_config: Mapping | None, dtype_name: str,
              token_ids: Mapping | None = None) -> dict:
  """A config.json (transformers 4 field names, which transformers 5 also reads) for this model
  (`token_ids`, from the tokenizer, win over the base's)."""
  base_config = base_config or {}
  # A workdir or import from before config.family: the base's model type, or Mistral's window, decides.
  mistral = cfg.family == "mistral" or base_config.get("model_type") == "mistral" or cfg.sliding_window is not None
  out = common_hf_config(cfg, base_config, dtype_name, token_ids,
                         {"bos_token_id": 1, "eos_token_id": 2, "max_position_embeddings": 4096})
  out.update(architectures=["MistralForCausalLM" if mistral else "LlamaForCausalLM"],
             model_type="mistral" if mistral else "llama", hidden_act="silu")
  if mistral:
    out["sliding_window"] = cfg.sliding_window
  else:
    out.update(attention_bias=False, mlp_bias=False)
  return out


def token_ids(tokenizer) -> dict[str, int | None]:
  """config.json's special ids from the tokenizer (no pad id when the tokenizer has no pad token)."""
  return {"bos_token_id": tokenizer.bos_id if tokenizer.bos_id >= 0 else None, "eos_token_id": tokenizer.eos_id,
          "pad_token_id": tokenizer.pad_id if tokenizer.has_pad else None}
