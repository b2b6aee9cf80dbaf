"""Hugging Face T5 v1.1 / Flan-T5 / mT5 checkpoints <-> instruct_jax T5: config fields and tensor names.

Hugging Face keeps each stack's relative position table in block 0 (`...block.0.layer.0.SelfAttention.
relative_attention_bias.weight`, [buckets, H]); instruct_jax keeps it in `encoder/relpos_bias` and
`decoder/relpos_bias`. Linear weights are [out, in] and are transposed into the einsum-shaped kernels.

Output layer: transformers 4 ties `lm_head` to `shared` and scales the decoder output by d_model**-0.5
exactly when `tie_word_embeddings` is true; transformers 5 writes `scale_decoder_outputs` for the scaling
and keeps `lm_head` separate only when the checkpoint holds a different `lm_head.weight`. The importer
follows the tensors: a checkpoint with `lm_head.weight` becomes an untied model (with the scale folded
into the kernel if the config scales), one without becomes tied (scaled) or untied from `shared`.
"""
from __future__ import annotations

from collections.abc import Mapping

from instruct_jax.models.families import base as tensors
from instruct_jax.models.families.base import ConversionError, TensorMap
from instruct_jax.models.t5 import T5Config

MODEL_TYPES = ("t5", "mt5")
ARCHITECTURES = ("T5ForConditionalGeneration", "MT5ForConditionalGeneration")
KIND = "encoder_decoder"


def default_chat_format(tokenizer) -> None:
  """None: T5 checkpoints come without a chat layout; a chat run names one (config.data.chat_format)."""
  del tokenizer

ROW_FORMAT = "t5"  # Tokenizer.save_for_hf: the encoder reads the text + end-of-text
PEFT_TASK_TYPE = "SEQ_2_SEQ_LM"
LORA_NAMES = {"query": "q", "key": "k", "value": "v", "out": "o", "wi_0": "wi_0", "wi_1": "wi_1", "wo": "wo"}
_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
           "relative_attention_num_buckets", "relative_attention_max_distance", "layer_norm_epsilon",
           "feed_forward_proj", "dense_act_fn", "is_gated_act", "tie_word_embeddings", "scale_decoder_outputs",
           "dropout_rate", "classifier_dropout", "is_encoder_decoder", "is_decoder", "n_positions", "output_past",
           "tie_encoder_decoder")
_UNUSED_OK = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
              "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")

_ATTENTION = {("query", "kernel"): ("q.weight", True, 1), ("key", "kernel"): ("k.weight", True, 1),
              ("value", "kernel"): ("v.weight", True, 1), ("out", "kernel"): ("o.weight", True, 2)}
_MLP = {("mlp", "wi_0", "kernel"): ("wi_0.weight", True, 1), ("mlp", "wi_1", "kernel"): ("wi_1.weight", True, 1),
        ("mlp", "wo", "kernel"): ("wo.weight", True, 1)}


def _sub(block: str, name: str, table: Mapping) -> dict:
  return {(name,) + k: (f"{block}.{s}", t, sp) for k, (s, t, sp) in table.items()}


ENCODER_LAYER = {**_sub("layer.0.SelfAttention", "attention", _ATTENTION),
                 ("pre_attention_norm", "scale"): ("layer.0.layer_norm.weight", False, None),
                 **{k: (f"layer.1.DenseReluDense.{s}", t, sp) for k, (s, t, sp) in _MLP.items()},
                 ("pre_mlp_norm", "scale"): ("layer.1.layer_norm.weight", False, None)}
DECODER_LAYER = {**_sub("layer.0.SelfAttention", "self_attention", _ATTENTION),
                 ("pre_self_attention_norm", "scale"): ("layer.0.layer_norm.weight", False, None),
                 **_sub("layer.1.EncDecAttention", "cross_attention", _ATTENTION),
                 ("pre_cross_attention_norm", "scale"): ("layer.1.layer_norm.weight", False, None),
                 **{k: (f"layer.2.DenseReluDense.{s}", t, sp) for k, (s, t, sp) in _MLP.items()},
                 ("pre_mlp_norm", "scale"): ("layer.2.layer_norm.weight", False, None)}


def _scales_output(hf: Mapping) -> bool:
  return bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True)))


def config_from_hf(hf: Mapping, names: set[str], where: str, *, allow_unknown_fields: bool = False,
                   **overrides) -> T5Config:
  """T5Config for a Hugging Face T5 config.json whose checkpoint holds tensors `names`."""
  tensors.check_fields(hf, _FIELDS, where, allow_unknown_fields, architectures=ARCHITECTURES)
  proj = hf.get("feed_forward_proj", "relu")
  if proj != "gated-gelu":
    raise ConversionError(f"{where}: feed_forward_proj={proj!r}; instruct_jax's T5 is T5 v1.1 / Flan-T5 with a "
                          "'gated-gelu' MLP (original T5 'relu' checkpoints are not supported)")
  if hf.get("dense_act_fn", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
    raise ConversionError(f"{where}: dense_act_fn={hf['dense_act_fn']!r}; only the tanh GELU (gelu_new) is "
                          "implemented")
  if hf.get("is_encoder_decoder") is False or hf.get("tie_encoder_decoder"):
    raise ConversionError(f"{where}: is_encoder_decoder/tie_encoder_decoder describe a model other than T5 "
                          "v1.1 (an encoder-decoder with separate encoder and decoder weights)")
  req = lambda f: tensors.require(hf, f, where)
  num_layers = req("num_layers")
  tied = _scales_output(hf) and "lm_head.weight" not in names
  fields = dict(vocab_size=req("vocab_size"), d_model=req("d_model"), d_ff=req("d_ff"), num_heads=req("num_heads"),
                head_dim=req("d_kv"), num_encoder_layers=num_layers,
                num_decoder_layers=hf.get("num_decoder_layers") or num_layers,
                relpos_buckets=hf.get("relative_attention_num_buckets", 32),
                relpos_max_distance=hf.get("relative_attention_max_distance", 128),
                norm_eps=hf.get("layer_norm_epsilon", 1e-6), dropout_rate=hf.get("dropout_rate", 0.1),
                tie_embeddings=tied, family="mt5" if hf.get("model_type") == "mt5" else "t5")
  return T5Config(**{**fields, **overrides})


def tensor_maps(cfg: T5Config, hf: Mapping | None = None, names: set[str] | None = None) -> dict:
  """{parameter path: TensorMap}; `hf`/`names` (import) choose the embedding and output tensors."""
  names = names or set()
  embedding = "shared.weight"
  if "shared.weight" not in names and "encoder.embed_tokens.weight" in names:
    embedding = "encoder.embed_tokens.weight"
  maps = {("token_embedder", "embedding"): TensorMap((embedding,))}
  for stack, table, n in (("encoder", ENCODER_LAYER, cfg.num_encoder_layers),
                          ("decoder", DECODER_LAYER, cfg.num_decoder_layers)):
    maps[(stack, "relpos_bias", "rel_embedding")] = TensorMap(
        (f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",))
    maps[(stack, "final_norm", "scale")] = TensorMap((f"{stack}.final_layer_norm.weight",), split=None)
    tensors.add_layers(maps, (stack, "stack"), n, cfg.scan_layers, table, stack + ".block.{i}.")
  if not cfg.tie_embeddings:
    scale = cfg.d_model ** -0.5 if hf is not None and _scales_output(hf) else 1.0
    source = "lm_head.weight" if (hf is None or "lm_head.weight" in names) else embedding
    maps[("decoder", "logits_dense", "kernel")] = TensorMap((source,), transpose=True, scale=scale)
  return maps


def ignorable(name: str) -> bool:
  return name in _UNUSED_OK


def hf_config(cfg: T5Config, base: Mapping | None, dtype_name: str, token_ids: Mapping | None = None) -> dict:
  """A config.json that transformers 4 and 5 read as this model (`token_ids`, from the tokenizer, win)."""
  base = base or {}
  kept = {k: v for k, v in base.items() if k in tensors.GENERIC_FIELDS}
  model_type = "mt5" if cfg.family == "mt5" or base.get("model_type") == "mt5" else "t5"
  return {
      **{"pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}, **kept, **(token_ids or {}),
      "architectures": ["MT5ForConditionalGeneration" if model_type == "mt5" else "T5ForConditionalGeneration"],
      "model_type": model_type, "dtype": dtype_name, "torch_dtype": dtype_name,
      "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "d_kv": cfg.head_dim, "d_ff": cfg.d_ff,
      "num_heads": cfg.num_heads, "num_layers": cfg.num_encoder_layers, "num_decoder_layers": cfg.num_decoder_layers,
      "relative_attention_num_buckets": cfg.relpos_buckets,
      "relative_attention_max_distance": cfg.relpos_max_distance, "layer_norm_epsilon": cfg.norm_eps,
      "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
      "dropout_rate": cfg.dropout_rate, "is_encoder_decoder": True,
      "tie_word_embeddings": cfg.tie_embeddings, "scale_decoder_outputs": cfg.tie_embeddings,
  }


def token_ids(tokenizer) -> dict[str, int]:
  """config.json's special ids from the tokenizer; the decoder starts from id 0 (transforms.DECODER_START_ID)."""
  return {"pad_token_id": tokenizer.pad_id if tokenizer.has_pad else 0, "eos_token_id": tokenizer.eos_id,
          "decoder_start_token_id": 0}
