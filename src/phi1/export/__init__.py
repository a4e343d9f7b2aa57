"""Exports of phi1 model directories for other runtimes: GGUF for llama.cpp, Ollama and LM Studio."""
