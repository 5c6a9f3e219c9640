"""The node list ComfyUI registers (V3 extension API)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .convert_nodes import ConvertLora, InspectLora
from .dataset_node import LoadTrainingImages
from .load_node import LoadLora
from .loss_plot_node import PlotTrainingLoss
from .merge_node import MergeLoras
from .resize_node import ResizeLora
from .save_node import SaveLora
from .train_node import TrainLora


class LoraLabExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LoadTrainingImages, TrainLora, SaveLora, LoadLora, PlotTrainingLoss, ConvertLora, InspectLora,
                MergeLoras, ResizeLora]
