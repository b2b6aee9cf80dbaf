"""Tiny random transformers models saved as Hugging Face checkpoint directories, and ways to run them.

Weights are re-drawn at scales that make every parameter matter to the logits (norm scales away from 1,
sharp attention, a large relative position table), so a mapping mistake cannot hide in small numbers.
"""
import json
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 96
# Small buckets / distance so that 12-token sequences reach T5's log-spaced buckets.
_T5 = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
           relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
           decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
_LLAMA3 = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, rope_theta=500.0, tie_word_embeddings=True, rms_norm_eps=1e-5,
               pad_token_id=0, rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
# Mistral: grouped-query attention with a head width decoupled from hidden_size / heads (8 x 8 != 32), and a
# sliding window shorter than the test sequences (12 tokens), so the window shapes every logit after the 5th.
SLIDING_WINDOW = 5
_MISTRAL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=8,
                num_key_value_heads=2, head_dim=8, sliding_window=SLIDING_WINDOW, tie_word_embeddings=False,
                pad_token_id=0)

# Today's families, each with what sets it apart made to matter at 12 tokens: Qwen2's q/k/v biases; Qwen3's q/k
# norms and a head width apart from hidden_size / heads; Gemma's sliding and global layers (a window of 5), its
# query scale apart from the head width, Gemma 2's soft-capping at values the logits reach, Gemma 3's two RoPE
# bases with the global one linearly scaled.
_QWEN2 = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rope_theta=1000.0, tie_word_embeddings=True, rms_norm_eps=1e-6)
_QWEN3 = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=1, head_dim=16, rope_theta=1000.0, tie_word_embeddings=False, rms_norm_eps=1e-6)
_GEMMA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=12, sliding_window=SLIDING_WINDOW,
              rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=2, eos_token_id=1)
_GEMMA2 = dict(_GEMMA, attn_logit_softcapping=2.0, final_logit_softcapping=5.0,
               rope_parameters={"rope_type": "default", "rope_theta": 100.0})
_GEMMA3 = dict(_GEMMA, layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
               rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
                                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0}})
FAMILY_CONFIGS = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _QWEN2),
                  "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", _QWEN3),
                  "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", _GEMMA2),
                  "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", _GEMMA3)}

KINDS = {"t5_flan": "encoder_decoder", "t5_scaled": "encoder_decoder", "t5_v5_tied": "encoder_decoder",
         "llama3": "decoder", "mistral": "decoder", **{name: "decoder" for name in FAMILY_CONFIGS}}


def _redraw(model, seed: int) -> None:
  """Norm scales around 1 (not exactly 1), a unit-scale position table; decoder-only weights scaled up.

  T5 keeps transformers' own initialisation for its matrices (it folds 1/sqrt(K) into the query).
  """
  gen = torch.Generator().manual_seed(seed)
  t5 = isinstance(model, transformers.T5ForConditionalGeneration)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:  # norm scales
        p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
      elif "relative_attention_bias" in name or "embed" in name or "shared" in name:
        p.copy_(torch.randn(p.shape, generator=gen))
      elif not t5 or name == "lm_head.weight":
        p.copy_(torch.randn(p.shape, generator=gen) * 1.5 / p.shape[1] ** 0.5)


def build(name: str, seed: int = 0):
  """A torch model in eval mode for one of KINDS."""
  torch.manual_seed(seed)
  if name.startswith("t5"):
    model = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**_T5, tie_word_embeddings=(name == "t5_scaled")))
    if name == "t5_flan":  # Flan-T5 / T5 v1.1: a separate, unscaled output layer
      model.lm_head.weight = torch.nn.Parameter(torch.empty(VOCAB, _T5["d_model"]))
  elif name == "llama3":
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**_LLAMA3))
  elif name in FAMILY_CONFIGS:
    config_cls, model_cls, fields = FAMILY_CONFIGS[name]
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**fields))
  else:
    model = transformers.MistralForCausalLM(transformers.MistralConfig(**_MISTRAL))
  _redraw(model, seed)
  return model.eval()


def save(model, directory: pathlib.Path, name: str, **kwargs) -> pathlib.Path:
  model.save_pretrained(directory, safe_serialization=True, **kwargs)
  if name == "t5_flan":  # write the config as the released Flan-T5 checkpoints have it (transformers 4)
    cfg = json.loads((directory / "config.json").read_text())
    cfg.pop("scale_decoder_outputs", None)
    cfg["tie_word_embeddings"] = False
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
  return directory


def hf_logits(model, batch: dict) -> np.ndarray:
  """transformers' logits for a batch in instruct_jax's feature names (masks passed as attention_mask)."""
  t = lambda k: torch.tensor(np.asarray(batch[k]))
  with torch.no_grad():
    if "encoder_input_tokens" in batch:
      out = model(input_ids=t("encoder_input_tokens"), attention_mask=t("encoder_segment_ids"),
                  decoder_input_ids=t("decoder_input_tokens"), decoder_attention_mask=t("decoder_segment_ids"))
    else:
      out = model(input_ids=t("decoder_input_tokens"), attention_mask=t("decoder_segment_ids"),
                  position_ids=t("decoder_positions"))
  return out.logits.float().numpy()


def batch(kind: str, lengths, dec_lengths=None, *, length: int = 12, left_pad: bool = False, seed: int = 0):
  """Random tokens (ids >= 2) padded with 0; segment ids are the masks, positions count real tokens."""
  rng = np.random.default_rng(seed)
  def padded(lens, first=None):
    tokens = np.zeros((len(lens), length), np.int32)
    mask = np.zeros((len(lens), length), np.int32)
    for row, n in enumerate(lens):
      cols = slice(length - n, length) if left_pad else slice(0, n)
      tokens[row, cols] = rng.integers(2, VOCAB, n)
      mask[row, cols] = 1
      if first is not None:
        tokens[row, cols.start] = first
    return tokens, mask
  if kind == "encoder_decoder":
    enc, enc_mask = padded(lengths)
    dec, dec_mask = padded(dec_lengths or lengths, first=0)  # decoder_start_token_id = pad = 0
    return {"encoder_input_tokens": enc, "encoder_segment_ids": enc_mask, "decoder_input_tokens": dec,
            "decoder_segment_ids": dec_mask}
  tokens, mask = padded(lengths)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  return {"decoder_input_tokens": tokens, "decoder_segment_ids": mask, "decoder_positions": positions}


def target_mask(b: dict) -> np.ndarray:
  return np.asarray(b["decoder_segment_ids"], bool)


SPM_TEXTS = ["The quick brown fox jumps over the lazy dog.", "Instruction tuning teaches a model to follow tasks.",
             "Sort the numbers: 3 1 2", "Answer the question: what is two plus two? four", "Reverse: a b c"] * 40


def train_spm(path: pathlib.Path, *, llama_ids: bool = False) -> pathlib.Path:
  """A real SentencePiece model of at most VOCAB pieces at `path` (T5's ids, or LLaMA's: unk 0, bos 1, eos 2)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  ids = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1) if llama_ids else dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
  spm.SentencePieceTrainer.train(sentence_iterator=iter(SPM_TEXTS), model_prefix=str(path.with_suffix("")),
                                 vocab_size=80, hard_vocab_limit=False, minloglevel=2, **ids)
  return path
