"""Language models behind one interface, for the programs that call one (synthetic data, the judge):
`backends` (the interface, `ScriptedBackend`), `openai` (OpenAI-compatible HTTP servers) and `model` (a model of
this project, decoded with the KV cache).
"""
