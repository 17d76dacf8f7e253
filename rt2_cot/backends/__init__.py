"""Model backends behind one protocol: the built-in model, any local transformers VLM, a remote
OpenAI-compatible server. `load_backend(spec)` turns a `--model` argument into one."""
