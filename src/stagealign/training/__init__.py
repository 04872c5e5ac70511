"""SFT and preference training on top of TRL."""
