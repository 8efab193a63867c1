"""The pack's ComfyUI nodes (V3 schema). Thin: validation, then a call into ``core`` via ``host``."""
from __future__ import annotations

from .host import ComfyExtension, io
from .appearance import EyeForAnEyeFreeU, SemanticFeatureRearrange
from .analogy import DeltaInterpolationTrainer, TokenInjector
from .analogy_score import AnalogyScore
from .inversion import DDIMInvert, InversionReplaySampler
from .translation import CutLossGuidance, EditDirectionNode

NODES: list[type[io.ComfyNode]] = [DDIMInvert, InversionReplaySampler, SemanticFeatureRearrange, EyeForAnEyeFreeU,
                                 EditDirectionNode, CutLossGuidance, DeltaInterpolationTrainer, TokenInjector,
                                 AnalogyScore]


class ExemplarEditExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
