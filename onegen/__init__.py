"""OneGen: one decoder LLM that marks entity mentions and embeds them for retrieval in one pass."""
