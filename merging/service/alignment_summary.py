"""Numbers that summarise an alignment for a person: the mean matched correlation and the group worth showing."""
from __future__ import annotations

from ..align import Alignment


def mean_matched(alignment: Alignment) -> tuple[float, float]:
    """Mean matched correlation over all groups, before and after the permutation."""
    groups = list(alignment.groups.values())
    return sum(g.before for g in groups) / len(groups), sum(g.after for g in groups) / len(groups)


def showcase_group(alignment: Alignment, max_units: int = 256) -> str:
    """The group whose heatmap shows the alignment best: the largest after/before gain among groups small
    enough to draw cell by cell (larger ones are block-averaged, which blurs the diagonal)."""
    groups = alignment.groups
    small = [name for name, g in groups.items() if len(g.perm) <= max_units] or list(groups)
    return max(small, key=lambda name: groups[name].after / max(groups[name].before, 1e-6))
