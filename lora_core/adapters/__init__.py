"""Adapters: what an adapter is (base.py), one file per algorithm (lora, loha, lokr, dora), the registry of
algorithms (algorithms.py), which layers get one (targets.py, layer_kinds.py), attaching them (injection.py), and
the trained weights of a whole LoRA (lora_weights.py)."""
