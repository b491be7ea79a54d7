"""The OneGen special tokens, defined once. No other module spells these strings."""

LINK = "[LK]"  # retrieval token, query side: emitted after each mention ([RQ] in the paper)
ENTITY = "[SE]"  # retrieval token, document side: ends each entity description ([RD])
CONTINUE = "[_CONTINUE_]"  # generation token forced right after every [LK] ([CON])
SPECIAL_TOKENS = (ENTITY, LINK, CONTINUE)  # order of the released checkpoint: ids 32000, 32001, 32002

# New token rows start as the mean embedding of these descriptions (official OneGen code).
TOKEN_DESCRIPTIONS = {
    LINK: "information of subject or object",
    ENTITY: "description of entity",
    CONTINUE: "continue to output",
}

MENTION_OPEN = "<MENTION>"  # plain text, not an added token
MENTION_CLOSE = "</MENTION>"


def mark(mention: str) -> str:
    """The target form of one mention: `<MENTION>m</MENTION>[LK][_CONTINUE_]`."""
    return f"{MENTION_OPEN}{mention}{MENTION_CLOSE}{LINK}{CONTINUE}"
