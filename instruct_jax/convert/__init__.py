"""Checkpoints in and out of instruct_jax: Hugging Face (every family of `instruct_jax.models.families`) and T5X
readers and writers, imported directories, and the `python -m instruct_jax.convert` command line (`__main__.py`).

    from instruct_jax import convert
    pretrained = convert.load_pretrained(path, mesh, rules)   # a workdir, imported, HF or T5X directory
    convert.export_hf(pretrained.config, pretrained.params, "out/", tokenizer=convert.load_tokenizer(path))

Modules: `pretrained` (import, export, imported dirs), `peft` (LoRA adapters as PEFT directories), `t5x` (T5X
checkpoints), `tensors` (tensor sources and sharded placement; what each family maps is `models/families/`),
`added_tokens` (a chat format's special strings added to a checkpoint's tokenizer, its embedding tables grown).
"""
from instruct_jax.convert.pretrained import (  # noqa: F401
    FAMILIES, MODEL_CONFIG, PARAMS_DIR, Pretrained, export_hf, import_hf, import_t5x, load_imported,
    check_tokenizer, load_pretrained, load_tokenizer, load_workdir, read_hf_config, save_imported, source_kind)
from instruct_jax.convert.peft import base_model_name, export_peft, import_peft, read_peft_config  # noqa: F401
from instruct_jax.convert.tensors import ConversionError  # noqa: F401
