"""API-format ComfyUI workflows (the dicts POST /prompt takes), built in code.

LoRA Lab's node class types and their input names live in LORA_LAB_NODES / *_INPUTS below: one place to
change when the node definitions change.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Node:
    id: str
    class_type: str

    def __getitem__(self, output_index: int) -> list:
        """Link to this node's output_index-th output, as the API format writes it."""
        return [self.id, output_index]


@dataclass
class Graph:
    nodes: dict = field(default_factory=dict)

    def add(self, class_type: str, **inputs) -> Node:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": dict(inputs)}
        return Node(node_id, class_type)

    def api(self) -> dict:
        return {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in self.nodes.items()}


# --- LoRA Lab node ids and input names (binding names from the team contract; adjust here) --------------
LORA_LAB_NODES = {
    "dataset": "LoraLabDataset",
    "train": "LoraLabTrain",
    "save": "LoraLabSaveLora",
    "load": "LoraLabLoadLora",
    "loss_plot": "LoraLabLossPlot",
}
# LoraLabTrain outputs, in order
TRAIN_OUTPUTS = {"MODEL": 0, "LORA": 1, "LOSS": 2}

DEFAULT_DATASET_INPUTS = {"resolution": 64, "aspect_buckets": True, "trigger_word": "", "caption_template": "",
                          "default_caption": "", "validation": 0.0, "cache_folder": ""}  # memory-only cache
DEFAULT_TRAIN_INPUTS = {
    "steps": 4, "learning_rate": 1e-4, "rank": 4, "alpha": 4.0, "target_preset": "attention",
    "batch_size": 1, "grad_accumulation": 1, "lr_schedule": "constant", "warmup_steps": 0,
    # the node's own defaults (checkpointing on, precision auto), so integration tests run the path users take
    "timestep_sampling": "auto", "precision": "auto", "gradient_checkpointing": True, "seed": 0,
    "output_name": "lora_lab_test",
}
# LoraLabLoadLora(model, lora_name, strength_model, strength_clip, clip?, lora?) -> (model, clip, report)
DEFAULT_LOAD_INPUTS = {"strength_model": 1.0, "strength_clip": 1.0}

SAMPLER = {"seed": 42, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}


# --- stock pieces ------------------------------------------------------------------------------------------
def _sample_and_save_latent(g: Graph, model, clip, prompt: str, width: int, height: int, seed: int,
                            steps: int, filename_prefix: str, negative: str = "", cfg: float | None = None,
                            positive_cond=None, negative_cond=None) -> Node:
    """CLIPTextEncode (+/-) -> EmptyLatentImage -> KSampler -> SaveLatent; returns the SaveLatent node.

    SaveLatent writes output/<prefix>_00001_.latent, a safetensors file with key "latent_tensor".
    """
    pos = positive_cond if positive_cond is not None else g.add("CLIPTextEncode", text=prompt, clip=clip)[0]
    neg = negative_cond if negative_cond is not None else g.add("CLIPTextEncode", text=negative, clip=clip)[0]
    latent = g.add("EmptyLatentImage", width=width, height=height, batch_size=1)
    sampler = g.add("KSampler", model=model, positive=pos, negative=neg, latent_image=latent[0],
                    **dict(SAMPLER, seed=seed, steps=steps, cfg=SAMPLER["cfg"] if cfg is None else cfg))
    return g.add("SaveLatent", samples=sampler[0], filename_prefix=filename_prefix)


def checkpoint_sample_workflow(ckpt_name: str, prompt: str = "a photo of a cat", *, width: int = 64,
                               height: int = 64, seed: int = 42, steps: int = 3,
                               lora: tuple[str, float, float] | None = None,
                               filename_prefix: str = "latents/sample") -> dict:
    """CheckpointLoaderSimple [-> LoraLoader(name, strength_model, strength_clip)] -> sample -> SaveLatent."""
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=ckpt_name)
    model, clip = ckpt[0], ckpt[1]
    if lora is not None:
        name, s_model, s_clip = lora
        loader = g.add("LoraLoader", model=model, clip=clip, lora_name=name, strength_model=s_model,
                       strength_clip=s_clip)
        model, clip = loader[0], loader[1]
    _sample_and_save_latent(g, model, clip, prompt, width, height, seed, steps, filename_prefix)
    return g.api()


def unet_sample_workflow(unet_name: str, clip_name: str, clip_type: str, prompt: str = "a photo of a cat", *,
                         width: int = 64, height: int = 64, seed: int = 42, steps: int = 3,
                         lora: tuple[str, float] | None = None, weight_dtype: str = "default",
                         filename_prefix: str = "latents/flow") -> dict:
    """UNETLoader + CLIPLoader(type) [-> LoraLoaderModelOnly] -> sample (cfg 1) -> SaveLatent (Flux / SD3)."""
    g = Graph()
    model = g.add("UNETLoader", unet_name=unet_name, weight_dtype=weight_dtype)[0]
    clip = g.add("CLIPLoader", clip_name=clip_name, type=clip_type)[0]
    if lora is not None:
        model = g.add("LoraLoaderModelOnly", model=model, lora_name=lora[0], strength_model=lora[1])[0]
    _sample_and_save_latent(g, model, clip, prompt, width, height, seed, steps, filename_prefix, cfg=1.0)
    return g.api()


# --- native ComfyUI training (the benchmark's anchor) ------------------------------------------------------
NATIVE_TRAIN_INPUTS = {
    "batch_size": 1, "grad_accumulation_steps": 1, "steps": 4, "learning_rate": 1e-4, "rank": 4,
    "optimizer": "AdamW", "loss_function": "MSE", "seed": 0, "training_dtype": "fp32", "lora_dtype": "fp32",
    "algorithm": "LoRA", "gradient_checkpointing": True, "existing_lora": "[None]", "bucket_mode": False,
}


def native_defaults(node_info: dict) -> dict:
    """Default values of a node's widget inputs, from its /object_info entry (inputs differ by ComfyUI version)."""
    out = {}
    for section in ("required", "optional"):
        for name, spec in node_info.get("input", {}).get(section, {}).items():
            if len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]:
                out[name] = spec[1]["default"]
    return out


def native_train_workflow(ckpt_name: str, input_subfolder: str, train_inputs: dict | None = None,
                          save_prefix: str | None = None, node_info: dict | None = None) -> dict:
    """CheckpointLoaderSimple + LoadImageTextDataSetFromFolder -> MakeTrainingDataset -> TrainLoraNode
    [-> SaveLoRA]. input_subfolder is relative to the server's input directory. node_info (TrainLoraNode's
    /object_info entry) supplies the version's own defaults and output order; inputs it lacks are dropped."""
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=ckpt_name)
    data = g.add("LoadImageTextDataSetFromFolder", folder=input_subfolder)
    made = g.add("MakeTrainingDataset", images=data[0], vae=ckpt[2], clip=ckpt[1], texts=data[1])
    inputs = dict(NATIVE_TRAIN_INPUTS, **(train_inputs or {}))
    outputs = ["MODEL", "LORA_MODEL", "LOSS_MAP", "INT"]  # the January order
    if node_info:
        known = native_defaults(node_info)
        inputs = {**known, **{k: v for k, v in inputs.items() if k in known}}
        outputs = list(node_info.get("output", outputs))
    train = g.add("TrainLoraNode", model=ckpt[0], latents=made[0], positive=made[1], **inputs)
    if save_prefix:
        g.add("SaveLoRA", lora=train[outputs.index("LORA_MODEL")], prefix=save_prefix, steps=train[outputs.index("INT")])
    return g.api()


# --- LoRA Lab -------------------------------------------------------------------------------------------------
def lora_lab_train_nodes(g: Graph, model, clip, vae, dataset_dir: str, train_inputs: dict | None = None,
                         dataset_inputs: dict | None = None) -> Node:
    """Add LoraLabDataset -> LoraLabTrain to g; returns the train node (outputs MODEL, LORA, LOSS)."""
    dataset = g.add(LORA_LAB_NODES["dataset"], folder=str(dataset_dir),
                    **dict(DEFAULT_DATASET_INPUTS, **(dataset_inputs or {})))
    return g.add(LORA_LAB_NODES["train"], model=model, clip=clip, vae=vae, dataset=dataset[0],
                 **dict(DEFAULT_TRAIN_INPUTS, **(train_inputs or {})))


def train_then_sample_workflow(ckpt_name: str, dataset_dir: str, train_inputs: dict | None = None, *,
                               dataset_inputs: dict | None = None, prompt: str = "a photo of a cat",
                               save_name: str | None = None, loss_plot: bool = False, width: int = 64,
                               height: int = 64, seed: int = 42, steps: int = 3,
                               filename_prefix: str = "latents/trained") -> dict:
    """CheckpointLoaderSimple -> LoraLabDataset -> LoraLabTrain -> (MODEL) KSampler -> SaveLatent,
    plus LoraLabSaveLora(lora, name) when save_name is given and LoraLabLossPlot -> SaveImage when loss_plot."""
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=ckpt_name)
    train = lora_lab_train_nodes(g, ckpt[0], ckpt[1], ckpt[2], dataset_dir, train_inputs, dataset_inputs)
    if save_name:
        g.add(LORA_LAB_NODES["save"], lora=train[TRAIN_OUTPUTS["LORA"]], name=save_name)
    if loss_plot:
        plot = g.add(LORA_LAB_NODES["loss_plot"], loss=train[TRAIN_OUTPUTS["LOSS"]], width=512, height=256)
        g.add("SaveImage", images=plot[0], filename_prefix="lora_lab_loss")
    _sample_and_save_latent(g, train[TRAIN_OUTPUTS["MODEL"]], ckpt[1], prompt, width, height, seed, steps,
                            filename_prefix)
    return g.api()


def train_only_workflow(ckpt_name: str, dataset_dir: str, train_inputs: dict | None = None, *,
                        dataset_inputs: dict | None = None, save_name: str = "lora_lab_bench") -> dict:
    """CheckpointLoaderSimple -> LoraLabDataset -> LoraLabTrain -> LoraLabSaveLora (the benchmark's graph)."""
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=ckpt_name)
    train = lora_lab_train_nodes(g, ckpt[0], ckpt[1], ckpt[2], dataset_dir, train_inputs, dataset_inputs)
    g.add(LORA_LAB_NODES["save"], lora=train[TRAIN_OUTPUTS["LORA"]], name=save_name)
    return g.api()


def load_lora_sample_workflow(ckpt_name: str, lora_name: str, prompt: str = "a photo of a cat", *,
                              load_inputs: dict | None = None, width: int = 64, height: int = 64,
                              seed: int = 42, steps: int = 3, filename_prefix: str = "latents/loaded") -> dict:
    """CheckpointLoaderSimple -> LoraLabLoadLora(model, clip, lora_name, ...) -> sample -> SaveLatent."""
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=ckpt_name)
    loaded = g.add(LORA_LAB_NODES["load"], model=ckpt[0], clip=ckpt[1], lora_name=lora_name,
                   **dict(DEFAULT_LOAD_INPUTS, **(load_inputs or {})))
    _sample_and_save_latent(g, loaded[0], loaded[1], prompt, width, height, seed, steps, filename_prefix)
    return g.api()
