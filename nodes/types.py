"""The pack's own socket types, shared by the nodes that produce and consume them."""

from comfy_api.latest import io

DATASET = io.Custom("LORA_LAB_DATASET")  # lora_core ImageDataset, or a DatasetMix (data/dataset_mix.py)
LORA = io.Custom("LORA_LAB_LORA")  # nodes.lora_state.TrainedLora
LOSS = io.Custom("LORA_LAB_LOSS")  # {"loss": [float per step], "name": str}
BUCKET_OPTIONS = io.Custom("LORA_LAB_BUCKET_OPTIONS")  # dict from 'Bucket Options' (nodes/dataset_options.py)
CAPTION_OPTIONS = io.Custom("LORA_LAB_CAPTION_OPTIONS")  # dict from 'Caption Options'
AUGMENTATION = io.Custom("LORA_LAB_AUGMENTATION")  # lora_core.augment.AugmentConfig from 'Augmentation'
MASK_OPTIONS = io.Custom("LORA_LAB_MASK_OPTIONS")  # lora_core.data.masks.MaskConfig from 'Mask Options'
# Optional config groups for Train LoRA (nodes/train_options.py); each carries a plain dict of settings.
OPTIMIZER_OPTIONS = io.Custom("LORA_LAB_OPTIMIZER_OPTIONS")
LOSS_OPTIONS = io.Custom("LORA_LAB_LOSS_OPTIONS")
ALGORITHM_OPTIONS = io.Custom("LORA_LAB_ALGORITHM_OPTIONS")
TEXT_ENCODER_OPTIONS = io.Custom("LORA_LAB_TEXT_ENCODER_OPTIONS")
PREVIEW_OPTIONS = io.Custom("LORA_LAB_PREVIEW_OPTIONS")
PRESERVATION_OPTIONS = io.Custom("LORA_LAB_PRESERVATION_OPTIONS")  # dict from nodes/preservation_options.py
