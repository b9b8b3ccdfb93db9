"""Intermediate representation: the intents compilers publish and the datapath lowers. Pure."""
