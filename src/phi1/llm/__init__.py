"""Talking to LLM endpoints: the OpenAI-compatible async client shared by `phi1 data annotate`,
`phi1 synth ...` and `phi1 eval judge`, and the settings that build it (`ClientSettings`)."""

from phi1.llm.client import ClientSettings, LLMClient, LLMResult

__all__ = ["ClientSettings", "LLMClient", "LLMResult"]
