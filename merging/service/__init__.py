"""The service behind the app (no Gradio): settings (`config`), the allow-listed encoders (`allowlist`), where
computations run and in what order (`runner`, `turns`, `releases`, `pool`, `weights`), a person's values
(`session`, `controls`), the lab that aligns and merges (`lab`), the one scorer (`scoring`), the teaching and
listening panels (`teaching`) and exports. `Service.start` wires one of each; docs/architecture.md draws them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..state import MergeError
from .config import LabConfig
from .lab import Lab
from .scoring import Scoring
from .session import LabSession
from .store import WARM_DIR, Shipped, Store
from .teaching import Teaching
from .tuning import Tuning


@dataclass(frozen=True)
class Service:
    """One lab, its scorer and its teaching panels, sharing one runner."""

    lab: Lab
    scoring: Scoring
    teaching: Teaching
    tuning: Tuning

    @classmethod
    def start(cls, config: LabConfig | None = None, *, budget_seconds: float | None = None,
              shipped: Path | None = WARM_DIR) -> Service:
        """One of each; with `config.cache_dir`, results are kept in a store there, which falls back on the results
        `shipped` (the built-ins' warm results in assets/warm; None: none)."""
        config = config or LabConfig()
        store = None
        if config.cache_dir is not None:
            store = Store(config.cache_dir, config.cache_bytes, Shipped(shipped) if shipped else None)
        lab = Lab(config, store=store)
        scoring = Scoring(lab, budget_seconds)
        return cls(lab, scoring, Teaching(lab, scoring), Tuning(lab, scoring))

    def warm(self) -> None:
        """The built-in speech and music encoders' full-suite scores (background turns), their alignment, then their
        linear and permute curves over the α grid, each read from the store when it holds them (from a fresh clone:
        the shipped warm results), computed otherwise; then the probe suite's clips are decoded for the first merge
        no one has scored. Errors are left for the page to report when someone asks."""
        sources = self.lab.default_sources()
        speech, music = sources["speech"], sources["music"]
        try:
            for job in self.scoring.prefetch(speech, music):
                job.result()
            session = self.lab.align(LabSession(), speech, music)
            self.scoring.warm(self.lab.curve_recipes(session, speech, music))
            self.scoring.decode_suite()
        except MergeError:
            pass

    def export(self, session: LabSession) -> str:
        """A zip of the session's merge recording the latest stage the page showed (its first stage if none)."""
        merged = session.merged
        if merged is None:
            raise MergeError("nothing to export yet: merge first (step 3)")
        scores = merged.stage or self.scoring.latest(merged.recipe).summary()
        return str(self.lab.export(session, scores))


__all__ = ["LabConfig", "Lab", "Scoring", "Service", "Teaching", "Tuning"]
