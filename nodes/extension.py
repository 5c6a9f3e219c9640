"""The node list ComfyUI registers (V3 extension API)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .cache_node import EncodingCacheNode
from .caption_nodes import CaptionImages, SaveCaptions
from .control_options import ControlImages, DatasetControlImages
from .convert_nodes import ConvertLora, InspectLora
from .dataset_node import LoadTrainingImages
from .dataset_mix_nodes import CombineDatasets, RegularisationDataset
from .dataset_options import Augmentation, BucketOptions, CaptionOptions, MaskOptions
from .load_node import LoadLora
from .loss_plot_node import PlotTrainingLoss
from .merge_node import MergeLoras
from .preservation_options import PreservationOptions
from .progress_events import prompt_server
from .progress_log import register_routes
from .resize_node import ResizeLora
from .save_node import SaveLora
from .train_node import TrainLora
from .train_options import OPTION_NODES
from .video_dataset_node import LoadTrainingVideos


class EmptyExtension(ComfyExtension):
    """What a second copy of the pack gives ComfyUI: nothing to register (the first copy's nodes are in use)."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return []


class LoraLabExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # GET /lora_lab/progress (a page reloaded mid-run restores its chart). Here, not in on_load: the January
        # 2026 ComfyUI never calls on_load. Both add the server's routes only after loading the custom nodes.
        server = prompt_server()
        if server is not None:
            register_routes(server.routes)
        return [LoadTrainingImages, LoadTrainingVideos, BucketOptions, CaptionOptions, Augmentation, MaskOptions,
                EncodingCacheNode, TrainLora, *OPTION_NODES, SaveLora, LoadLora, PlotTrainingLoss, ConvertLora,
                InspectLora, MergeLoras, ResizeLora, PreservationOptions, CombineDatasets, RegularisationDataset,
                CaptionImages, SaveCaptions, ControlImages, DatasetControlImages]
