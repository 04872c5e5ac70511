"""The synthetic world: a known reward on text, pool writers, SFT'd tiny initial policies."""
