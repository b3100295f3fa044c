"""The platform proof: a tiny GPTModel trains identically under every TP/PP/DP layout on gloo.

One reference model is written at (1,1,1) as a megatron-core dist checkpoint, loaded in each
layout, and trained for a few steps with Megatron DDP, the (distributed) optimizer and the 1F1B
schedule; the loss sequences must match the single-rank run.
"""

from __future__ import annotations

import math

import pytest

from tests.multirank import run_ranks

pytestmark = pytest.mark.slow

STEPS = 3
GLOBAL_BATCH = 4
SEQ = 16
VOCAB = 128


def _build(tp: int, pp: int, seed: int, load_dir=None, use_dist_opt: bool = False):
    import torch
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    from sppo_megatron.platform.distributed import init_distributed

    init_distributed(tp=tp, pp=pp, seed=seed)
    config = TransformerConfig(
        num_layers=4,
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        ffn_hidden_size=128,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        pipeline_dtype=torch.float32,
        use_cpu_initialization=True,
        params_dtype=torch.float32,
    )
    model = GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        position_embedding_type="rope",
        share_embeddings_and_output_weights=False,
    )
    if load_dir is not None:
        state = dist_checkpointing.load(sharded_state_dict=model.sharded_state_dict(), checkpoint_dir=load_dir)
        model.load_state_dict(state)
    ddp = DistributedDataParallel(
        config=config,
        ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=use_dist_opt),
        module=model,
    )
    return config, model, ddp


def _save_reference(ckpt_dir: str) -> None:
    import os

    from megatron.core import dist_checkpointing

    os.makedirs(ckpt_dir, exist_ok=True)
    _, model, _ = _build(1, 1, seed=7)
    dist_checkpointing.save(sharded_state_dict=model.sharded_state_dict(), checkpoint_dir=ckpt_dir)


def _train(tp: int, pp: int, ckpt_dir: str, use_dist_opt: bool):
    import torch
    from megatron.core import parallel_state
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    config, model, ddp = _build(tp, pp, seed=11, load_dir=ckpt_dir, use_dist_opt=use_dist_opt)
    config.finalize_model_grads_func = finalize_model_grads
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=3e-3,
            weight_decay=0.0,
            use_distributed_optimizer=use_dist_opt,
            params_dtype=torch.float32,
            clip_grad=1.0,
        ),
        [ddp],
    )
    dp = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ + 1), generator=gen)  # memorised: loss must fall
    per_rank = GLOBAL_BATCH // dp
    losses = []
    for _ in range(STEPS):
        local = data[dp_rank * per_rank : (dp_rank + 1) * per_rank]
        micro = iter(local.split(1))

        def forward_step(data_iterator, model):
            tokens = next(data_iterator)
            inputs, labels = tokens[:, :-1], tokens[:, 1:]
            position_ids = torch.arange(SEQ).unsqueeze(0)
            out = model(inputs, position_ids, None, labels=labels)

            def loss_func(output):
                loss = output.float().mean()
                return loss, {"loss": loss.detach().clone()}

            return out, loss_func

        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        results = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=micro,
            model=[ddp],
            num_microbatches=per_rank,
            seq_length=SEQ,
            micro_batch_size=1,
            forward_only=False,
        )
        optimizer.step()
        local_loss = torch.tensor(0.0)
        if parallel_state.is_pipeline_last_stage():
            local_loss = torch.stack([r["loss"] for r in results]).mean()
        torch.distributed.all_reduce(local_loss)
        # every rank of the last stage adds its DP share; normalise by the contributing ranks
        losses.append(local_loss.item() / (dp * parallel_state.get_tensor_model_parallel_world_size()))
    return losses


def _reference(ckpt_dir: str):
    _save_reference(ckpt_dir)
    return _train(1, 1, ckpt_dir, False)


def _train_layouts(layouts, ckpt_dir: str):
    """Several layouts of one world size, one after another in the same ranks (the groups are
    rebuilt for each): one spawn per world size instead of one per layout."""
    return {layout: _train(layout[0], layout[1], ckpt_dir, layout[3]) for layout in layouts}


LAYOUTS = {
    "tp2": (2, 1, 1, False),
    "pp2": (1, 2, 1, False),
    "dp2-distopt": (1, 1, 2, True),
    "tp2pp2-distopt": (2, 2, 1, True),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ckpt = str(tmp_path_factory.mktemp("ref") / "ckpt")
    return ckpt, run_ranks(_reference, 1, ckpt)[0]


@pytest.fixture(scope="module")
def layout_losses(reference):
    """name -> losses; the first layout asked for of each world size trains all of that size."""
    ckpt, _ = reference
    by_world = {}

    def get(name):
        world = math.prod(LAYOUTS[name][:3])
        if world not in by_world:
            layouts = [layout for layout in LAYOUTS.values() if math.prod(layout[:3]) == world]
            by_world[world] = run_ranks(_train_layouts, world, layouts, ckpt, timeout=300)[0]
        return by_world[world][LAYOUTS[name]]

    return get


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_matches_single_rank(reference, layout_losses, layout):
    _, ref_losses = reference
    losses = layout_losses(layout)
    assert ref_losses[-1] < ref_losses[0], "the reference run did not train"
    for got, want in zip(losses, ref_losses):
        assert abs(got - want) <= 1e-4 * abs(want), (losses, ref_losses)
