"""How a model is spread over ranks (FSDP2 with mixed precision, HSDP across nodes), what it
keeps for the backward (activation checkpointing, full or selective) and which parts are compiled.

Units are each decoder layer, the rest of the model (embeddings, ViT, final norm) and the
text-only head; the loss calls ``model.model`` and the head, never the whole model's forward.
Parameters are gathered in the compute dtype and gradients reduced in fp32. With ``replicas > 1``
the ranks form a 2D mesh (replicas x shards): parameters are sharded within a group of
``world / replicas`` ranks (one node, say) and replicated across groups (HSDP), so the
all-gathers stay on the fast links and only the gradient all-reduce crosses nodes.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import create_selective_checkpoint_contexts

__all__ = ["apply_activation_checkpointing", "apply_compile", "parallelize"]


def parallelize(model, head, *, world: int, device: torch.device, compute_dtype: torch.dtype,
                replicas: int = 1, whole_model: bool = False):
    """Shard ``model`` (and ``head``) in place over ``world`` ranks; ``whole_model`` wraps the
    model itself as the last unit (the Hugging Face engine calls its forward)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if world % replicas:
        raise ValueError(f"config key 'replicas': {replicas} does not divide the {world} ranks")
    if replicas > 1:
        mesh = init_device_mesh(device.type, (replicas, world // replicas), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    shard = lambda module: fully_shard(module, mesh=mesh, mp_policy=policy)
    for layer in model.model.language_model.layers:
        shard(layer)
    shard(model.model)
    shard(model if whole_model else head)
    return model


def apply_activation_checkpointing(model, policy: str = "full") -> None:
    """Non-reentrant activation checkpointing of every decoder layer. ``"full"`` recomputes the
    whole layer in the backward; ``"selective"`` saves the outputs of the GEMMs and attention (the
    costly ops) and recomputes only the elementwise ones (norms, rotary, activations, residuals).

    transformers 5.23 renamed ``gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)``
    (the only spelling of the GPU image's 5.17) to ``activation_checkpointing_enable(...)``."""
    kwargs = {"use_reentrant": False}
    if policy == "selective":
        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _saved_ops())
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # Enabling also hooks every input embedding to make its output require grad (for reentrant
    # checkpointing of frozen layers), the ViT's patch embedding among them: the frozen ViT would then
    # be back-propagated and, under full checkpointing, run again. Non-reentrant needs none of it.
    model.disable_input_require_grads()


def _saved_ops() -> list:
    """The ops whose outputs selective checkpointing keeps: matrix products and attention."""
    aten = torch.ops.aten
    ops = [aten.mm.default, aten.addmm.default, aten.bmm.default, torch.ops.livecc.varlen_attention_fwd.default]
    for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu"):
        if hasattr(aten, name):
            ops.append(getattr(aten, name).default)
    return ops


def apply_compile(model) -> None:
    """Regional ``torch.compile``: each decoder layer compiled on its own (one graph reused by
    every layer, so compiling takes one layer's time), fusing its norms, rotary embedding,
    activation and residual adds. livecc's attention is a custom op with a fake implementation, so
    the graph runs around it. Applied before sharding, as FSDP2 wants."""
    for layer in model.model.language_model.layers:
        layer.compile()

