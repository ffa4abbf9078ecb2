"""OpenAI wire format: request models and response builders."""
