"""One BPR training step and one evaluation of a single-process model, and the
optimizer and sampler every run (single-process or distributed) builds alike."""
import torch

from ..data import BPRSampler
from ..evaluation import ranking_metrics
from ..model import BPRLoss


def bpr_step(model, graph, optimizer, num_users, users, positives, negatives, lambda_reg,
             precision="float32"):
    """One optimizer step on a batch (item ids 0-based, items are nodes
    num_users + item); returns the loss, still on the device. precision:
    how the propagation stores the layers it gathers ("float32" or "bf16",
    LightGCN.get_embedding_rows); a model with PyG's API only is float32."""
    # First, so that the last step's gradient is not kept through this one.
    optimizer.zero_grad(set_to_none=True)
    nodes = torch.cat([users, positives + num_users, negatives + num_users])
    # The batch's propagated rows and layer-0 rows (the L2 term's): the
    # backward of both is one [N, d] gradient, the last forward sweep and the
    # first backward sweep touch the batch's rows and their edges only.
    if hasattr(model, "get_embedding_rows"):
        out, emb = model.get_embedding_rows(graph, nodes, precision=precision)
    elif precision != "float32":
        raise ValueError(f"precision={precision!r} needs lightgcn_ext's LightGCN, got "
                         f"{type(model).__name__}")
    else:  # a model with PyG's API only (torch_geometric's LightGCN)
        out, emb = model.get_embedding(graph)[nodes], model.embedding.weight[nodes]
    user_emb, pos_emb, neg_emb = out.split([users.numel(), positives.numel(), negatives.numel()])
    pos_scores = (user_emb * pos_emb).sum(dim=-1)
    neg_scores = (user_emb * neg_emb).sum(dim=-1)
    # model.recommendation_loss with node_id=nodes, on the rows already gathered.
    loss = BPRLoss(lambda_reg)(pos_scores, neg_scores, emb)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def evaluate_model(model, graph, data, ks, split="test"):
    """Full-ranking metrics of the model on data.test (or data.valid), the
    training items (and, for test, the validation items) excluded."""
    embedding = model.get_embedding(graph)
    users, items = embedding[:data.num_users], embedding[data.num_users:]
    if split == "valid":
        return ranking_metrics(users, items, data.valid, exclude=[data.train], ks=ks)
    exclude = [data.train] + ([] if data.valid is None else [data.valid])
    return ranking_metrics(users, items, data.test, exclude=exclude, ks=ks)


def make_optimizer(params, config):
    """Adam with fused=True: one kernel updates the weights and both moments
    in a single pass (CPU and CUDA), several times faster than the
    multi-tensor (foreach) step over a whole embedding table, with the same
    numbers up to float rounding (the update's operations in another order:
    a few units in the last place per step)."""
    return torch.optim.Adam(params, lr=config.lr, fused=True)


# The options of an optimizer's parameter group that choose its implementation.
_IMPLEMENTATION = ("fused", "foreach")


def load_optimizer_state(optimizer, state_dict):
    """optimizer.load_state_dict(state_dict), keeping the optimizer's own
    implementation: load_state_dict takes every option of a group from the
    saved one, so the checkpoint of an unfused Adam would turn the fused one
    back into it. A fused step wants its step counts as float32 tensors on
    the parameters' device."""
    kept = [{key: group.get(key) for key in _IMPLEMENTATION} for group in optimizer.param_groups]
    optimizer.load_state_dict(state_dict)
    for group, implementation in zip(optimizer.param_groups, kept):
        group.update(implementation)
        if not implementation["fused"]:
            continue
        for param in group["params"]:
            param_state = optimizer.state.get(param, {})
            if isinstance(param_state.get("step"), torch.Tensor):
                param_state["step"] = param_state["step"].to(param.device, torch.float32)


def make_sampler(config, data, device):
    """The BPR sampler and its generator: the same global batches for a seed."""
    if data.train.numel() == 0:
        raise ValueError(f"data {data.name!r} has no training interactions")
    sampler = BPRSampler(data.train, data.num_users, data.num_items, config.batch_size, device,
                         sampling=config.sampling)
    return sampler, torch.Generator(device=device).manual_seed(config.seed)
