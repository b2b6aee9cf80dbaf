"""Hugging Face LLaMA / Llama-3 / Mistral checkpoints <-> the instruct_jax decoder: config and tensor names.

instruct_jax applies RoPE in the split-halves layout that Hugging Face LLaMA weights use, so q_proj and
k_proj need no permutation: Linear weights [out, in] are only transposed into einsum-shaped kernels.
RoPE: default and Llama-3 ("llama3") frequency scaling are implemented; other rope types are refused.
Mistral's sliding window (Mistral-7B v0.1: 4096; later Mistral releases set none) becomes the decoder's
`sliding_window`: each token attends to the last `sliding_window` positions, itself included.
"""
from __future__ import annotations

from collections.abc import Mapping


from instruct_jax.convert import tensors
from instruct_jax.convert.tensors import ConversionError, TensorMap
from instruct_jax.models.decoder import DecoderConfig
from instruct_jax.models.layers import RopeScaling

MODEL_TYPES = ("llama", "mistral")
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
           "tie_word_embeddings", "hidden_act", "attention_bias", "mlp_bias", "attention_dropout",
           "max_position_embeddings", "pretraining_tp", "sliding_window", "use_sliding_window")
# Defaults of transformers' LlamaConfig / MistralConfig for fields a config.json may leave out.
_DEFAULT_KV_HEADS = {"mistral": 8}

LAYER = {
    ("attention", "query", "kernel"): ("self_attn.q_proj.weight", True, 1),
    ("attention", "key", "kernel"): ("self_attn.k_proj.weight", True, 1),
    ("attention", "value", "kernel"): ("self_attn.v_proj.weight", True, 1),
    ("attention", "out", "kernel"): ("self_attn.o_proj.weight", True, 2),
    ("mlp", "wi_0", "kernel"): ("mlp.gate_proj.weight", True, 1),
    ("mlp", "wi_1", "kernel"): ("mlp.up_proj.weight", True, 1),
    ("mlp", "wo", "kernel"): ("mlp.down_proj.weight", True, 1),
    ("pre_attention_norm", "scale"): ("input_layernorm.weight", False, None),
    ("pre_mlp_norm", "scale"): ("post_attention_layernorm.weight", False, None),
}


def _rope(hf: Mapping, where: str) -> tuple[float, RopeScaling | None]:
  """(theta, scaling) from transformers 5's rope_parameters or transformers 4's rope_theta/rope_scaling."""
  params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
  kind = params.get("rope_type", params.get("type", "default"))
  if params.get("partial_rotary_factor", 1.0) != 1.0:
    raise ConversionError(f"{where}: partial_rotary_factor={params['partial_rotary_factor']} is not supported")
  if kind == "default":
    return theta, None
  if kind == "llama3":
    req = lambda f: tensors.require(params, f, f"{where} rope scaling")
    return theta, RopeScaling(factor=float(req("factor")), low_freq_factor=float(req("low_freq_factor")),
                              high_freq_factor=float(req("high_freq_factor")),
                              original_max_position=int(req("original_max_position_embeddings")))
  raise ConversionError(f"{where}: rope type {kind!r} is not supported; instruct_jax implements 'default' and "
                        "'llama3' RoPE")


def config_from_hf(hf: Mapping, names: set[str], where: str, *, allow_unknown_fields: bool = False,
                   **overrides) -> DecoderConfig:
  """DecoderConfig for a Hugging Face LLaMA/Mistral config.json whose checkpoint holds tensors `names`."""
  tensors.check_fields(hf, _FIELDS, where, allow_unknown_fields, architectures=ARCHITECTURES)
  if hf.get("hidden_act", "silu") != "silu":
    raise ConversionError(f"{where}: hidden_act={hf['hidden_act']!r}; the decoder's MLP is SwiGLU (silu)")
  for field in ("attention_bias", "mlp_bias"):
    if hf.get(field):
      raise ConversionError(f"{where}: {field}=true; the decoder has no biases")
  window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
  if window is not None and (not isinstance(window, int) or window < 1):
    raise ConversionError(f"{where}: sliding_window={window!r}; expected a positive integer or null")
  req = lambda f: tensors.require(hf, f, where)
  d_model, heads = req("hidden_size"), req("num_attention_heads")
  theta, scaling = _rope(hf, where)
  fields = dict(vocab_size=req("vocab_size"), d_model=d_model, d_ff=req("intermediate_size"), num_heads=heads,
                num_kv_heads=hf.get("num_key_value_heads") or _DEFAULT_KV_HEADS.get(hf.get("model_type"), heads),
                head_dim=hf.get("head_dim") or d_model // heads, num_layers=req("num_hidden_layers"),
                rope_theta=theta, rope_scaling=scaling, norm_eps=hf.get("rms_norm_eps", 1e-6),
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)) and "lm_head.weight" not in names,
                sliding_window=window)
  return DecoderConfig(**{**fields, **overrides})


def tensor_maps(cfg: DecoderConfig, hf: Mapping | None = None, names: set[str] | None = None) -> dict:
  """{parameter path: TensorMap} (the names are the same for import and export)."""
  del hf, names
  maps = {("token_embedder", "embedding"): TensorMap(("model.embed_tokens.weight",)),
          ("final_norm", "scale"): TensorMap(("model.norm.weight",), split=None)}
  tensors.add_layers(maps, ("layers",), cfg.num_layers, cfg.scan_layers, LAYER, "model.layers.{i}.")
  if not cfg.tie_embeddings:
    maps[("logits_dense", "kernel")] = TensorMap(("lm_head.weight",), transpose=True)
  return maps


def ignorable(name: str) -> bool:
  return name.endswith(".rotary_emb.inv_freq")  # a buffer older checkpoints saved


def hf_config(cfg: DecoderConfig, base: Mapping | None, dtype_name: str, token_ids: Mapping | None = None) -> dict:
  """A config.json (transformers 4 field names, which transformers 5 also reads) for this model
  (`token_ids`, from the tokenizer, win over the base's)."""
  base = base or {}
  kept = {k: v for k, v in base.items() if k in tensors.GENERIC_FIELDS or k == "max_position_embeddings"}
  mistral = base.get("model_type") == "mistral" or cfg.sliding_window is not None  # LLaMA has no window
  out = {
      **{"bos_token_id": 1, "eos_token_id": 2, "max_position_embeddings": 4096}, **kept, **(token_ids or {}),
      "architectures": ["MistralForCausalLM" if mistral else "LlamaForCausalLM"],
      "model_type": "mistral" if mistral else "llama", "dtype": dtype_name, "torch_dtype": dtype_name,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "rms_norm_eps": cfg.norm_eps,
      "hidden_act": "silu", "rope_theta": cfg.rope_theta, "tie_word_embeddings": cfg.tie_embeddings,
      "rope_scaling": None if cfg.rope_scaling is None else {
          "rope_type": "llama3", "factor": cfg.rope_scaling.factor,
          "low_freq_factor": cfg.rope_scaling.low_freq_factor,
          "high_freq_factor": cfg.rope_scaling.high_freq_factor,
          "original_max_position_embeddings": cfg.rope_scaling.original_max_position},
  }
  if mistral:
    out["sliding_window"] = cfg.sliding_window
  else:
    out.update(attention_bias=False, mlp_bias=False)
  return out


def token_ids(tokenizer) -> dict[str, int | None]:
  """config.json's special ids from the tokenizer (no pad id when the tokenizer has no pad token)."""
  return {"bos_token_id": tokenizer.bos_id if tokenizer.bos_id >= 0 else None, "eos_token_id": tokenizer.eos_id,
          "pad_token_id": tokenizer.pad_id if tokenizer.has_pad else None}


def tokenizer_family(hf: Mapping) -> str:
  """How the tokenizer is written for transformers (`Tokenizer.save_for_hf`): BOS + prompt, for this model type."""
  return hf["model_type"]
