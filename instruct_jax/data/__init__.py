"""Data: tasks and templates, Flan-style mixtures, and the grain pipeline that feeds the models.

    sources      TFDS (tfds.data_source), JSONL / JSON, Alpaca / Self-Instruct files, in-memory records
    superni      SuperNI task files and the "Definition + k positive examples" encoding
    builtin      procedurally generated tasks (the default; no download)
    templates    template files (templates/*.yaml) and safe rendering
    chat         conversations (OpenAI / ShareGPT), chat formats (Jinja) and their scored spans
    tasks        Task and the task catalogue
    flan2021     the Flan 2021 catalogue of TFDS datasets, its clusters and leave-one-cluster-out mixtures
    render       per-example template / options / few-shot / inversion / chain-of-thought choices
    mixtures     mixing rates and the mixture catalogue
    tokenizer    SentencePiece and tokenizer.json: load, train, export
    vocab        `python -m instruct_jax.data.vocab`: a vocabulary trained on a mixture's rendered text
    transforms   tokens -> model features with loss weights
    packing      packing / padding and batching
    pipeline     the grain pipeline and its config
    preview      `python -m instruct_jax.data.preview --mixture NAME -n 5`
"""
