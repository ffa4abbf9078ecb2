"""The eight chat prompts the bundled-model comparisons use."""

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the ocean.",
    "Explain paged attention in one paragraph.",
    "List three prime numbers and explain why they are prime.",
    "What is Kubernetes used for?",
    "Tell me a short story about a cat.",
    "How do GPUs speed up matrix multiplication?",
    "Describe the moon to a child.",
]
