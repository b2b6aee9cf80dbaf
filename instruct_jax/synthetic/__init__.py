"""Synthetic instruction data: Self-Instruct, Evol-Instruct, Orca-style traces, back-translation, curation.

One command per method, each writing `<out>/<method>.jsonl` (see `runner.py` for the directory
layout and how a killed or extended run resumes):

    python -m instruct_jax.synthetic.self_instruct   --seed-tasks F   ...
    python -m instruct_jax.synthetic.evol_instruct   --instructions F ...
    python -m instruct_jax.synthetic.orca            --queries F      ...
    python -m instruct_jax.synthetic.backtranslation --texts F        ...
    python -m instruct_jax.synthetic.curation        --inputs F,...   ...

with the shared flags `--backend openai --base-url URL --model NAME --api-key-env VAR` (an OpenAI-compatible
server) or `--backend model --workdir W [--step N]` (a model trained here, decoded with the KV cache), and
`--out DIR --num-instructions N --concurrency C --timeout S --max-retries R --seed S`.

Output schema: one JSON object per line.

    {
      "id": str,            unique within the file, stable across re-runs ("si-000012-3")
      "instruction": str,   the task
      "input": str,         the task's input ("" when the instruction stands alone)
      "output": str,        the response
      "system": str,        system message ("" when none; Orca and back-translation set it)
      "provenance": {
        "method": str,          "self_instruct" | "evol_instruct" | "orca" | "backtranslation" |
                                "curation"
        "round": int,           generation step / evolution round / curation iteration
        "parent_id": str|None,  the record, seed or source item this one came from
        "backend": str,         "openai" | "model" | "scripted" | "none"
        "model": str,           model name as given to the backend
        "prompt_version": str,  `version` of the prompts/*.yaml file used
        ...                     method extras (operator, system_message_id, scores, source...)
      }
    }

The four text fields are the ones instruct_jax.data's instruction sources read. API keys never
appear in records, settings, reports or the request cache.

The backends (the interface, OpenAI-compatible HTTP servers, a model of this project) live in `instruct_jax.lm`,
shared with the judge. Modules: cache (request cache), records (schema, append-only JSONL), prompts (versioned
prompt files), parsers, filters, rouge_novelty (fast exact ROUGE-L novelty filter), runner (run directory, counts,
resume), cli (shared flags), and one module per method.
"""
