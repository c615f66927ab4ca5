"""Provider implementations, one module per vendor, each imported only when first used.

Shipped now: ``local`` (llama.cpp, the embedded default). The other built-in names are
registered in ``llm_abstractions.factory`` and report "not implemented" until their modules
land.
"""
