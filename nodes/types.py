"""The pack's own socket types, shared by the nodes that produce and consume them."""

from comfy_api.latest import io

DATASET = io.Custom("LORA_LAB_DATASET")  # lora_core.dataset.ImageDataset
LORA = io.Custom("LORA_LAB_LORA")  # nodes.lora_state.TrainedLora
LOSS = io.Custom("LORA_LAB_LOSS")  # {"loss": [float per step], "name": str}
