"""Adapter algorithms, one per file on base.Adapter: LoRA/LoCon, LoHa, LoKr, DoRA (see adapters.py)."""
