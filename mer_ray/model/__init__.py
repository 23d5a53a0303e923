"""The network: its shape without torch (shape.py), a pack of K members with stacked
weights that train together (pack.py), the same model as a plain nn.Module for reading
and checking (module.py), and a member's weights file (weights.py)."""
