"""OneGen: one decoder LLM that marks entity mentions and embeds them for retrieval in one pass.

    from onegen import Linker
    docs = Linker.from_pretrained()(["Marie Curie was born in Warsaw."])
"""

# public name -> module that defines it; imported on first use, so `import onegen` stays light
_EXPORTS = {
    "Linker": "onegen.linker",
    "LinkerConfig": "onegen.linker_config",
    "Mention": "onegen.spans",
    "Candidate": "onegen.spans",
    "Document": "onegen.spans",
    "OneGen": "onegen.model",
    "TokenIds": "onegen.model",
    "add_onegen_tokens": "onegen.model",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    # Lazy: `import onegen.tokens` (or any light submodule) must not pull in torch and transformers.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'onegen' has no attribute {name!r}")
