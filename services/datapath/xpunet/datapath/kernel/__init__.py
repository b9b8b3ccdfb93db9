"""The kernel target: the xpunet pipeline's table entries as nftables sets/maps and netlink routes.

``ruleset`` (the fixed table shape), ``render`` (entries → kernel items,
incrementally), ``codec`` (items ↔ nft JSON) are pure; ``nft`` and ``routes``
are the adapters; ``target.KernelTarget`` ties them together.  See
docs/kernel-target.md.
"""
