"""The one definition of decoding speed: tokens committed per forward pass a sample ran ("TPF").

A sample's forwards are the denoising passes it ran until it stopped, what it pays when decoded alone: in a batch,
the passes at which it still had undecided positions in the current block (and, on a fixed schedule, something to
commit), not those its batch mates ran after it stopped at EOS or finished its block early. That is the number every report uses (`DiffusionGenerateOutput.tokens_per_forward`,
`evaluate_few_step`, lm-eval's `diffusion_lm`, the trajectory dataset card), and the parallelism AUP is measured with.

Why not the others:

- committed / (batch size x the decoder's forwards) charges every sample for its batch mates: a sample that stopped
  at EOS, or finished its block early under a threshold, still "pays" for the forwards the others ran, so the number
  depends on batch size and composition;
- max step + 1 of a recorded step map counts the batch's forward index, not the sample's forwards (the step index is
  global over the batch), with the same flaw.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def tokens_per_forward(committed: Iterable[int] | int, forwards: Iterable[int] | int) -> float:
    """Tokens committed per forward a sample ran, pooled over samples: `sum(committed) / sum(forwards)` (0.0 without
    a forward). `committed` and `forwards` are per-sample counts (or their totals)."""
    total_committed = committed if isinstance(committed, int) else sum(int(c) for c in committed)
    total_forwards = forwards if isinstance(forwards, int) else sum(int(f) for f in forwards)
    return total_committed / total_forwards if total_forwards else 0.0


def committed_tokens(step_map: torch.Tensor | Sequence[int]) -> torch.Tensor | int:
    """Tokens a sample kept: the positions of its step map with a step (>= 0; -1 marks positions after an EOS stop)."""
    if isinstance(step_map, torch.Tensor):
        return (step_map >= 0).sum(-1)
    return sum(1 for step in step_map if step >= 0)


def forwards_in_step_map(step_map: Sequence[int]) -> int:
    """The forwards a sample ran, read from its recorded step map when the decoder's own count is not at hand (a
    trajectory dataset): the distinct steps at which it committed a token it kept. Equal to the decoder's count
    (`DiffusionGenerateOutput.nfe_per_sample`) for a whole canvas whenever every forward commits (all but Dream's
    random `origin` commits); a step map cut after its EOS does not see the forwards that committed only positions
    after it."""
    return len({int(step) for step in step_map if step >= 0})
