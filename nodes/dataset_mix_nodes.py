"""Combine Datasets and Regularisation Dataset: several DATASETs in one Train LoRA run (lora_core.data.dataset_mix).

Each batch comes from one dataset (and one of its buckets); which one is drawn by the datasets' shares from the
run's seed, resumably. A dataset marked as regularisation trains toward the base model's own prediction or
toward its images (DreamBooth's class images), with its own loss weight.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..lora_core.data.dataset_mix import (REGULARISATION_TARGETS, SHARE_BY, as_regularisation, combine, mix_captions,
                                          mix_summary)
from .types import DATASET

SLOTS = 4


def _dataset_outputs() -> list:
    return [
        DATASET.Output(display_name="dataset"),
        io.String.Output(display_name="summary", tooltip="Each dataset, its share of the batches and its role."),
        io.String.Output(display_name="captions", is_output_list=True,
                         tooltip="Every dataset's captions, dataset after dataset: for a text-encoder node whose "
                                 "output goes to Train LoRA's conditioning."),
    ]


class CombineDatasets(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        inputs: list = []
        for k in range(1, SLOTS + 1):
            inputs += [DATASET.Input(f"dataset_{k}", optional=k > 2,
                                     tooltip="From a dataset loader, Regularisation Dataset or another Combine Datasets."),
                       io.Float.Input(f"weight_{k}", default=1.0, min=0.0, max=10000.0, step=0.1, optional=k > 2,
                                      tooltip="Share of the batches (share_by weight) or repeats of the dataset's "
                                              "samples (share_by repeats).")]
        return io.Schema(
            node_id="LoraLabCombineDatasets", display_name="Combine Datasets", category="LoRA Lab",
            description="Train on several datasets in one run. Every batch comes from one dataset and one of its "
                        "buckets; which dataset is drawn from the run's seed by the shares (resumable exactly). "
                        "Chain nodes for more than four.",
            inputs=[*inputs,
                    io.Combo.Input("share_by", options=list(SHARE_BY), default="weight",
                                   tooltip="weight: dataset k serves weight_k / sum of weights of the batches. repeats: "
                                           "each dataset's samples count weight_k times, so bigger datasets serve more.")],
            outputs=_dataset_outputs(),
        )

    @classmethod
    def execute(cls, dataset_1, weight_1, dataset_2, weight_2, share_by="weight", **more) -> io.NodeOutput:
        given = [(dataset_1, weight_1), (dataset_2, weight_2)]
        given += [(more[f"dataset_{k}"], more.get(f"weight_{k}", 1.0)) for k in range(3, SLOTS + 1)
                  if more.get(f"dataset_{k}") is not None]
        mix = combine(given, share_by)
        return io.NodeOutput(mix, mix_summary(mix), mix_captions(mix))


class RegularisationDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabRegularisationDataset", display_name="Regularisation Dataset", category="LoRA Lab",
            description="Mark a dataset as regularisation data, then combine it with the training dataset in "
                        "'Combine Datasets' (its weight there sets how many batches it serves).",
            inputs=[
                DATASET.Input("dataset", tooltip="Images of the class (e.g. other people, other dogs) with their captions."),
                io.Combo.Input("target", options=list(REGULARISATION_TARGETS), default="base_prediction",
                               tooltip="base_prediction: the model's own prediction with the LoRA off for these images "
                                       "and captions (one extra forward). images: these images as targets "
                                       "(DreamBooth prior preservation with class images)."),
                io.Float.Input("loss_weight", default=1.0, min=0.0, max=100.0, step=0.05,
                               tooltip="Weight of this dataset's loss (kohya's prior_loss_weight)."),
            ],
            outputs=_dataset_outputs(),
        )

    @classmethod
    def execute(cls, dataset, target, loss_weight) -> io.NodeOutput:
        mix = as_regularisation(dataset, target, loss_weight)
        return io.NodeOutput(mix, mix_summary(mix), mix_captions(mix))
