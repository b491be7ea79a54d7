"""OneGen: one decoder LLM that marks entity mentions and embeds them for retrieval in one pass."""

__all__ = ["OneGen", "TokenIds", "add_onegen_tokens"]


def __getattr__(name: str):
    # Lazy: `import onegen.tokens` (or any light submodule) must not pull in torch and transformers.
    if name in __all__:
        from onegen import model

        return getattr(model, name)
    raise AttributeError(f"module 'onegen' has no attribute {name!r}")
