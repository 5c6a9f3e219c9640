"""Plot Training Loss: the loss history, raw and smoothed, and the validation loss, as an IMAGE and a UI preview."""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io, ui

from ..lora_core.files.loss_plot import plot_losses
from .types import LOSS


class PlotTrainingLoss(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabLossPlot",
            display_name="Plot Training Loss",
            category="LoRA Lab",
            is_output_node=True,
            inputs=[
                LOSS.Input("loss", tooltip="Loss history from 'Train LoRA'."),
                io.Int.Input("width", default=768, min=256, max=4096),
                io.Int.Input("height", default=384, min=128, max=4096),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, loss, width, height) -> io.NodeOutput:
        title = "; ".join([f"loss: {loss.get('name', '')}", *loss.get("warnings", ())])  # e.g. checkpointing did nothing
        picture = plot_losses(loss["loss"], width=width, height=height, title=title,
                              validation=[tuple(point) for point in loss.get("validation", ())])
        image = torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)[None]
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))
