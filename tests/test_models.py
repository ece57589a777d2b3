"""Specification of the models: ViT sizes and masking, the frozen DAN, checkpoint formats in circulation.

Checkpoints in the authors' layouts are built here from random tensors under key names written out by hand, and
their expected outputs come from a small functional re-implementation of the original forward passes (plain torch
ops, not our model classes), so a wrong key name, head layout or numeric detail shows up as a failure.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from timm.models.vision_transformer import VisionTransformer

from models import (
    DAN,
    EMMA,
    VIT_PRESETS,
    CoTEX,
    build_model,
    build_vit,
    load_cotex_checkpoint,
    load_dan_weights,
    load_emma_checkpoint,
    load_mae_weights,
)
from models.vit import hybrid_stem
from utils.errors import UserError

NANO = VIT_PRESETS['nano']


# ----------------------------------------------------------------------------------------------------------------
# Independent reference: the authors' key layouts with random weights, and their forward passes in plain torch.
# ----------------------------------------------------------------------------------------------------------------

def random_vit_state(dim, depth, patch, grid, head_shapes, generator):
    """timm-0.4 / MAE ViT keys (qkv bias, no fc_norm) with random weights of sane scale."""
    def normal(*shape, std=0.05, mean=0.0):
        return torch.randn(*shape, generator=generator) * std + mean

    state = {
        'cls_token': normal(1, 1, dim, std=0.5),
        'pos_embed': normal(1, grid * grid + 1, dim, std=0.5),
        'patch_embed.proj.weight': normal(dim, 3, patch, patch),
        'patch_embed.proj.bias': normal(dim),
    }
    for block in range(depth):
        prefix = f'blocks.{block}.'
        for norm in ('norm1', 'norm2'):
            state[prefix + norm + '.weight'] = normal(dim, std=0.1, mean=1.0)
            state[prefix + norm + '.bias'] = normal(dim, std=0.1)
        for name, (out_features, in_features) in {'attn.qkv': (3 * dim, dim), 'attn.proj': (dim, dim),
                                                  'mlp.fc1': (4 * dim, dim), 'mlp.fc2': (dim, 4 * dim)}.items():
            state[prefix + name + '.weight'] = normal(out_features, in_features, std=in_features ** -0.5)
            state[prefix + name + '.bias'] = normal(out_features)
    state['norm.weight'] = normal(dim, std=0.1, mean=1.0)
    state['norm.bias'] = normal(dim, std=0.1)
    for name, (out_features, in_features) in head_shapes.items():
        state[name + '.weight'] = normal(out_features, in_features, std=in_features ** -0.5)
        state[name + '.bias'] = normal(out_features, std=0.1)
    return state


def reference_vit_tokens(state, x, num_heads, patch, shuffle_patches=False):
    """Final normalised tokens of the original ViT; `shuffle_patches` mimics its mask-ratio-0 forward (permuted)."""
    dim = state['cls_token'].shape[-1]
    tokens = F.conv2d(x, state['patch_embed.proj.weight'], state['patch_embed.proj.bias'], stride=patch)
    tokens = tokens.flatten(2).transpose(1, 2) + state['pos_embed'][:, 1:]
    if shuffle_patches:
        order = torch.rand(tokens.shape[:2]).argsort(dim=1)
        tokens = torch.gather(tokens, 1, order[..., None].expand(-1, -1, dim))
    cls = (state['cls_token'] + state['pos_embed'][:, :1]).expand(x.shape[0], -1, -1)
    h = torch.cat([cls, tokens], dim=1)
    batch, length, _ = h.shape
    head_dim = dim // num_heads
    block = 0
    while f'blocks.{block}.norm1.weight' in state:
        p = f'blocks.{block}.'
        y = F.layer_norm(h, (dim,), state[p + 'norm1.weight'], state[p + 'norm1.bias'], eps=1e-6)
        qkv = F.linear(y, state[p + 'attn.qkv.weight'], state[p + 'attn.qkv.bias'])
        q, k, v = qkv.reshape(batch, length, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        attention = ((q @ k.transpose(-2, -1)) / math.sqrt(head_dim)).softmax(dim=-1)
        y = (attention @ v).transpose(1, 2).reshape(batch, length, dim)
        h = h + F.linear(y, state[p + 'attn.proj.weight'], state[p + 'attn.proj.bias'])
        y = F.layer_norm(h, (dim,), state[p + 'norm2.weight'], state[p + 'norm2.bias'], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, state[p + 'mlp.fc1.weight'], state[p + 'mlp.fc1.bias'])),
                     state[p + 'mlp.fc2.weight'], state[p + 'mlp.fc2.bias'])
        h = h + y
        block += 1
    return F.layer_norm(h, (dim,), state['norm.weight'], state['norm.bias'], eps=1e-6)


def linear(state, name, x):
    return F.linear(x, state[name + '.weight'], state[name + '.bias'])


# torchvision resnet18 child index inside DAN's `features` Sequential
RESNET_CHILD_INDEX = {'conv1': 0, 'bn1': 1, 'layer1': 4, 'layer2': 5, 'layer3': 6, 'layer4': 7}


def random_bn(state, name, channels, generator):
    state[name + '.weight'] = 1 + 0.1 * torch.randn(channels, generator=generator)
    state[name + '.bias'] = 0.1 * torch.randn(channels, generator=generator)
    state[name + '.running_mean'] = 0.1 * torch.randn(channels, generator=generator)
    state[name + '.running_var'] = 0.5 + torch.rand(channels, generator=generator)
    state[name + '.num_batches_tracked'] = torch.tensor(1000)


def random_dan_state(generator, num_class=8):
    """The AffectNet DAN's keys: `features.<child>.*` (ResNet-18), `cat_head{0..3}.{sa,ca}.*`, `fc.*`, `bn.*`."""
    state = {}
    for key, value in torchvision.models.resnet18(weights=None).state_dict().items():
        child, rest = key.split('.', 1)
        if child == 'fc':
            continue
        name = f'features.{RESNET_CHILD_INDEX[child]}.{rest}'
        if value.ndim == 4:  # convolutions (no bias in ResNet-18): variance preserving
            state[name] = torch.randn(value.shape, generator=generator) * math.sqrt(1.0 / value[0].numel())
        elif rest.split('.')[-1] == 'weight':  # a BatchNorm: all five of its tensors
            random_bn(state, name[:-len('.weight')], value.shape[0], generator)
    for head in range(4):
        sa, ca = f'cat_head{head}.sa.', f'cat_head{head}.ca.'
        for name, (out_ch, in_ch, kh, kw) in {'conv1x1': (256, 512, 1, 1), 'conv_3x3': (512, 256, 3, 3),
                                              'conv_1x3': (512, 256, 1, 3), 'conv_3x1': (512, 256, 3, 1)}.items():
            state[sa + name + '.0.weight'] = torch.randn(out_ch, in_ch, kh, kw, generator=generator) * 0.02
            state[sa + name + '.0.bias'] = 0.01 * torch.randn(out_ch, generator=generator)
            random_bn(state, sa + name + '.1', out_ch, generator)
        state[ca + 'attention.0.weight'] = torch.randn(32, 512, generator=generator) * 0.05
        state[ca + 'attention.0.bias'] = 0.1 * torch.randn(32, generator=generator)
        random_bn(state, ca + 'attention.1', 32, generator)
        state[ca + 'attention.3.weight'] = torch.randn(512, 32, generator=generator) * 0.2
        state[ca + 'attention.3.bias'] = 0.1 * torch.randn(512, generator=generator)
    state['fc.weight'] = torch.randn(num_class, 512, generator=generator) * 0.05
    state['fc.bias'] = 0.1 * torch.randn(num_class, generator=generator)
    random_bn(state, 'bn', num_class, generator)
    return state


def batch_norm(state, name, x):
    return F.batch_norm(x, state[name + '.running_mean'], state[name + '.running_var'], state[name + '.weight'],
                        state[name + '.bias'], training=False, eps=1e-5)


def reference_dan_logits(state, x):
    """The original DAN forward in eval mode, heads written out with functional ops."""
    trunk = torchvision.models.resnet18(weights=None)
    index_to_child = {index: child for child, index in RESNET_CHILD_INDEX.items()}
    trunk_state = {}
    for key, value in state.items():
        if key.startswith('features.'):
            _, index, rest = key.split('.', 2)
            trunk_state[f'{index_to_child[int(index)]}.{rest}'] = value
    trunk.load_state_dict(trunk_state, strict=False)
    trunk.eval()
    f = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
    f = trunk.layer4(trunk.layer3(trunk.layer2(trunk.layer1(f))))

    def conv_bn(name, inp, padding):
        out = F.conv2d(inp, state[name + '.0.weight'], state[name + '.0.bias'], padding=padding)
        return batch_norm(state, name + '.1', out)

    heads = []
    for head in range(4):
        sa, ca = f'cat_head{head}.sa.', f'cat_head{head}.ca.'
        reduced = conv_bn(sa + 'conv1x1', f, 0)
        response = torch.relu(conv_bn(sa + 'conv_3x3', reduced, 1) + conv_bn(sa + 'conv_1x3', reduced, (0, 1)) +
                              conv_bn(sa + 'conv_3x1', reduced, (1, 0)))
        attended = f * response.sum(dim=1, keepdim=True)
        pooled = F.adaptive_avg_pool2d(attended, 1).flatten(1)
        gate = torch.relu(batch_norm(state, ca + 'attention.1', linear(state, ca + 'attention.0', pooled)))
        heads.append(pooled * torch.sigmoid(linear(state, ca + 'attention.3', gate)))
    heads = F.log_softmax(torch.stack(heads, dim=1), dim=1)
    return batch_norm(state, 'bn', linear(state, 'fc', heads.sum(dim=1)))


def authors_emma_state(generator, img_size):
    vit = random_vit_state(NANO['embed_dim'], NANO['depth'], 16, img_size // 16,
                           {'head.0': (512, NANO['embed_dim']), 'head.2': (20, 512)}, generator)
    state = {f'vit.{key}': value for key, value in vit.items()}
    state.update({f'cnn.{key}': value for key, value in random_dan_state(generator).items()})
    for name, shape in {'va_head.0': (256, 28), 'va_head.2': (2, 256)}.items():
        state[name + '.weight'] = torch.randn(*shape, generator=generator) * shape[1] ** -0.5
        state[name + '.bias'] = 0.1 * torch.randn(shape[0], generator=generator)
    return state


def reference_emma_outputs(state, x):
    vit = {key[4:]: value for key, value in state.items() if key.startswith('vit.')}
    cls = reference_vit_tokens(vit, x, NANO['num_heads'], 16)[:, 0]
    expr_au = linear(vit, 'head.2', torch.relu(linear(vit, 'head.0', cls)))
    dan = reference_dan_logits({key[4:]: value for key, value in state.items() if key.startswith('cnn.')}, x)
    joined = torch.cat([dan, expr_au], dim=1)
    va = linear(state, 'va_head.2', torch.relu(linear(state, 'va_head.0', joined)))
    return torch.cat([va, expr_au], dim=1)


def with_prefix(state, prefix):
    return {prefix + key: value for key, value in state.items()}


def images(batch, size, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def blocks_input_recorder(vit):
    seen = []
    vit.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen


# ----------------------------------------------------------------------------------------------------------------
# ViT sizes and masking
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size', list(VIT_PRESETS))
def test_every_vit_size_gives_the_preset_width_and_output_shapes(size):
    preset = VIT_PRESETS[size]
    img_size = 2 * preset['patch_size']
    x_shape = (1, 3, img_size, img_size)
    # sizes from 'small' up are built on the meta device: shapes without the memory and the init time
    with torch.device('cpu' if size in ('nano', 'tiny') else 'meta'):
        vit = build_vit(size, img_size=img_size, num_classes=6, drop_path=0.0)
        assert vit.embed_dim == preset['embed_dim'] and len(vit.blocks) == preset['depth']
        assert vit.patch_embed.num_patches == 4
        assert vit.eval()(torch.zeros(x_shape)).shape == (1, 6)
        assert vit.train()(torch.zeros(x_shape), 0.5).shape == (1, 6)
    with torch.device('meta'):
        emma = EMMA(size, img_size=img_size, drop_path=0.0).eval()
        cotex = CoTEX(2, 6, size, img_size=img_size, drop_path=0.0).eval()
        assert emma(torch.zeros(x_shape)).shape == (1, 22)
        assert [logits.shape for logits in cotex(torch.zeros(x_shape))] == [(1, 6), (1, 6)]
        assert cotex.predict(torch.zeros(x_shape)).shape == (1, 6)


def test_vit_uses_mae_numerics_layernorm_eps_and_class_token_pooling():
    vit = build_vit('nano', img_size=32, num_classes=3)
    assert all(norm.eps == 1e-6 for name, norm in vit.named_modules() if isinstance(norm, torch.nn.LayerNorm))
    assert vit.global_pool == 'token' and vit.blocks[0].attn.qkv.bias is not None
    assert vit.blocks[0].attn.fused_attn or not hasattr(F, 'scaled_dot_product_attention')
    pooled = build_vit('nano', img_size=32, num_classes=3, global_pool=True)
    assert pooled.global_pool == 'avg' and 'fc_norm.weight' in pooled.state_dict()
    assert 'norm.weight' not in pooled.state_dict()


@pytest.mark.parametrize('mask_ratio', [0.25, 0.5, 0.75, 0.9])
def test_masking_keeps_int_L_times_one_minus_r_patch_tokens_plus_class_token(mask_ratio):
    vit = build_vit('nano', img_size=64, num_classes=6, drop_path=0.0).train()
    seen = blocks_input_recorder(vit)
    out = vit(images(3, 64), mask_ratio)
    assert out.shape == (3, 6)
    assert seen[0].shape == (3, int(16 * (1 - mask_ratio)) + 1, NANO['embed_dim'])


def test_masked_tokens_carry_their_position_embedding_and_differ_between_samples():
    torch.manual_seed(0)
    vit = build_vit('nano', img_size=64, num_classes=6, drop_path=0.0).train()
    seen = blocks_input_recorder(vit)
    x = images(1, 64).expand(8, -1, -1, -1)  # identical images: any difference comes from the masks
    vit(x, 0.5)
    tokens = seen[0]
    with torch.no_grad():
        all_patches = vit.patch_embed(x[:1])[0] + vit.pos_embed[0, 1:]
        cls = (vit.cls_token + vit.pos_embed[:, :1])[0, 0]
    kept_sets = []
    for sample in tokens:
        assert torch.equal(sample[0], cls)
        distance = torch.cdist(sample[1:], all_patches)
        nearest = distance.argmin(dim=1)
        assert torch.allclose(sample[1:], all_patches[nearest], atol=1e-6)
        assert len(set(nearest.tolist())) == 8
        kept_sets.append(frozenset(nearest.tolist()))
    assert len(set(kept_sets)) > 1


def test_no_masking_in_eval_mode():
    vit = build_vit('nano', img_size=64, num_classes=6).eval()
    seen = blocks_input_recorder(vit)
    x = images(2, 64)
    out = vit(x, 0.75)
    assert seen[0].shape[1] == 17
    assert torch.equal(out, VisionTransformer.forward(vit, x))


def test_zero_mask_ratio_in_training_is_timms_plain_forward():
    vit = build_vit('nano', img_size=64, num_classes=6, drop_path=0.0).train()
    x = images(2, 64)
    assert torch.equal(vit(x, 0.0), VisionTransformer.forward(vit, x))


def test_patchify_layer_in_training_is_the_convolution_as_a_matrix_product_over_the_kept_patches_only():
    from models.vit import embed_kept_patches, keep_random_patches

    torch.manual_seed(0)
    vit = build_vit('nano', img_size=64, patch_size=8, num_classes=6).train()
    embed, conv = vit.patch_embed, vit.patch_embed.proj
    x, noise = images(3, 64), torch.rand(3, 64)
    pos = vit.pos_embed[:, 1:]

    def convolution():  # timm's layer: the strided convolution over every patch
        return F.conv2d(x, conv.weight, conv.bias, stride=8).flatten(2).transpose(1, 2)

    def reference():  # then the kept tokens
        return keep_random_patches(convolution() + pos, 0.75, noise)

    def gradients(tokens):
        grads = torch.autograd.grad((tokens * torch.linspace(-1, 1, tokens.numel()).view_as(tokens)).sum(),
                                    [conv.weight, conv.bias, vit.pos_embed])
        return [g.clone() for g in grads]

    (expected, expected_order), (tokens, order) = reference(), embed_kept_patches(embed, x, pos, 0.75, noise)
    assert tokens.shape == (3, 16, NANO['embed_dim']) and torch.equal(order, expected_order)
    assert torch.allclose(tokens, expected, atol=1e-5)
    for got, want in zip(gradients(tokens), gradients(expected)):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    full = convolution()
    assert torch.allclose(embed(x), full, atol=1e-5)
    with torch.no_grad():  # evaluation: timm's convolution itself, bit for bit
        assert torch.equal(embed(x), full)
    hybrid = build_vit('nano', img_size=64, patch_size=8, patch_embed='hybrid').train()
    assert not hybrid.patch_embed.patchify  # the hybrid stem keeps its convolutions
    assert hybrid.patch_embed(x).shape == (3, 64, NANO['embed_dim'])
    with pytest.raises(UserError, match='32 x 32; this ViT takes 64 x 64'):
        embed(images(1, 32))


def test_drop_path_skips_the_dropped_samples_branches_and_is_timms_drop_path_for_the_same_draw(monkeypatch):
    import models.vit as vit_module

    torch.manual_seed(0)
    block = build_vit('nano', img_size=64, num_classes=6, drop_path=0.3).blocks[-1].train()
    x = torch.randn(4, 17, NANO['embed_dim'], requires_grad=True)
    rows = []
    block.attn.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    block.mlp.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))

    def reference(keep_attn, keep_mlp):  # timm's DropPath: every sample's branch, times its mask over 1 - rate
        h = x + block.attn(block.norm1(x)) * (keep_attn / 0.7).view(-1, 1, 1)
        return h + block.mlp(block.norm2(h)) * (keep_mlp / 0.7).view(-1, 1, 1)

    def gradients(out):
        weights = torch.linspace(-1, 1, out.numel()).view_as(out)
        params = [x, block.attn.qkv.weight, block.norm1.weight, block.mlp.fc1.weight, block.mlp.fc2.bias]
        return [g.clone() for g in torch.autograd.grad((out * weights).sum(), params)]

    for attn_kept, mlp_kept in [([0, 2], [0, 1, 2, 3]), ([], [3]), ([1, 2, 3], [])]:
        draws = iter([torch.tensor(attn_kept, dtype=torch.long), torch.tensor(mlp_kept, dtype=torch.long)])
        monkeypatch.setattr(vit_module, 'kept_samples', lambda batch, rate, draws=draws: next(draws))
        rows.clear()
        out = block(x)
        assert rows == [len(attn_kept), len(mlp_kept)]  # the dropped samples never reach the branch
        masks = [torch.zeros(4).index_fill_(0, torch.tensor(kept, dtype=torch.long), 1.0)
                 for kept in (attn_kept, mlp_kept)]
        expected = reference(*masks)
        assert torch.allclose(out, expected, atol=1e-5)
        for got, want in zip(gradients(out), gradients(expected)):  # an empty branch still gets (zero) gradients
            assert torch.allclose(got, want, atol=1e-5)
    monkeypatch.undo()
    torch.manual_seed(1)
    kept = torch.cat([vit_module.kept_samples(50, 0.3) for _ in range(2000)])
    assert abs(kept.numel() / 100_000 - 0.7) < 0.006  # each sample kept with probability 1 - rate
    assert abs(kept.float().mean().item() - 24.5) < 0.3  # whatever its position in the batch
    with torch.no_grad():
        assert torch.equal(block.eval()(x), x + block.attn(block.norm1(x)) + block.mlp(block.norm2(
            x + block.attn(block.norm1(x)))))


@pytest.mark.parametrize('mask_ratio', [1.0, -0.1, 0.99])
def test_mask_ratio_out_of_range_or_keeping_nothing_is_a_user_error(mask_ratio):
    vit = build_vit('nano', img_size=64, num_classes=6).train()
    with pytest.raises(UserError, match='mask ratio'):
        vit(images(1, 64), mask_ratio)


@pytest.mark.parametrize('patch_size', [8, 16, 32])
def test_hybrid_patch_embedding_is_resnet18_stages_on_the_patchify_grid(patch_size):
    vit = build_vit('nano', img_size=64, num_classes=6, patch_size=patch_size, patch_embed='hybrid')
    trunk = torchvision.models.resnet18()
    stages = {8: 'layer2', 16: 'layer3', 32: 'layer4'}[patch_size]
    names = [name for name, _ in trunk.named_children()]
    kept = names[:names.index(stages) + 1]
    stem = vit.patch_embed.proj
    assert [type(m) for m in stem[:-1]] == [type(getattr(trunk, name)) for name in kept]
    trunk_state = {k: v for k, v in trunk.state_dict().items() if k.split('.')[0] in kept}
    assert [v.shape for v in stem[:-1].state_dict().values()] == [v.shape for v in trunk_state.values()]
    grid = 64 // patch_size
    assert vit.patch_embed(images(2, 64)).shape == (2, grid * grid, NANO['embed_dim'])


def test_hybrid_patch_embedding_masks_tokens_like_the_patchify_one():
    vit = build_vit('nano', img_size=64, num_classes=6, drop_path=0.0, patch_size=8, patch_embed='hybrid').train()
    x = images(3, 64)
    assert vit.patch_embed(x).shape == (3, 64, NANO['embed_dim'])
    seen = blocks_input_recorder(vit)
    assert vit(x, 0.5).shape == (3, 6)
    assert seen[0].shape == (3, 32 + 1, NANO['embed_dim'])
    vit.eval()
    assert torch.equal(vit(x, 0.5), VisionTransformer.forward(vit, x))


def test_hybrid_patch_embedding_refuses_other_patch_sizes_and_mae_weights():
    with pytest.raises(UserError, match='patch size 8, 16 or 32'):
        build_vit('nano', img_size=60, patch_size=12, patch_embed='hybrid')
    with pytest.raises(UserError, match='unknown patch embedding'):
        build_vit('nano', img_size=64, patch_embed='resnet50')
    mae = build_vit('nano', img_size=64).state_dict()
    with pytest.raises(UserError, match='--patch-embed linear'):
        load_mae_weights(build_vit('nano', img_size=64, patch_embed='hybrid'), mae, log=lambda _: None)


def test_default_stem_blocks_draw_resnet18s_initial_weights():
    torch.manual_seed(3)
    stem = hybrid_stem(16, NANO['embed_dim'])
    torch.manual_seed(3)
    trunk = torchvision.models.resnet18()
    expected = {k: v for k, v in trunk.state_dict().items() if k.split('.')[0] in
                ('conv1', 'bn1', 'layer1', 'layer2', 'layer3')}
    got = stem[:-1].state_dict()
    assert len(got) == len(expected)
    for (key, value), (trunk_key, trunk_value) in zip(got.items(), expected.items()):
        assert torch.equal(value, trunk_value), (key, trunk_key)


@pytest.mark.parametrize('patch_size, blocks, counts', [(8, [1], (1, 1)), (8, [1, 2], (1, 2)), (16, [3], (3, 3, 3)),
                                                         (32, [1, 2, 1, 3], (1, 2, 1, 3)), (16, None, (2, 2, 2))])
def test_stem_blocks_set_the_residual_blocks_of_each_stage(patch_size, blocks, counts):
    vit = build_vit('nano', img_size=64, num_classes=6, patch_size=patch_size, patch_embed='hybrid',
                    stem_blocks=blocks)
    stem = vit.patch_embed.proj
    stages = stem[4:-1]
    assert tuple(len(stage) for stage in stages) == counts
    assert all(isinstance(block, torchvision.models.resnet.BasicBlock) for stage in stages for block in stage)
    # the stride stays the patch size's: the same token grid as the patchify layer
    grid = 64 // patch_size
    assert vit.patch_embed(images(2, 64)).shape == (2, grid * grid, NANO['embed_dim'])
    # fewer blocks keep the names of ResNet-18's first ones, so the parameters are a subset of the default stem's
    default = build_vit('nano', img_size=64, patch_size=patch_size, patch_embed='hybrid').state_dict()
    if max(counts) <= 2:
        assert set(vit.state_dict()) - {'head.weight', 'head.bias'} <= set(default)


def test_stem_blocks_of_another_length_or_on_the_patchify_layer_are_user_errors():
    with pytest.raises(UserError, match='has 2 ResNet stages'):
        build_vit('nano', img_size=64, patch_size=8, patch_embed='hybrid', stem_blocks=[1, 1, 1])
    with pytest.raises(UserError, match='at least 1'):
        build_vit('nano', img_size=64, patch_size=8, patch_embed='hybrid', stem_blocks=[0])
    with pytest.raises(UserError, match='patchify layer has none'):
        build_vit('nano', img_size=64, stem_blocks=[1])


@pytest.mark.parametrize('name', ['emma', 'cotex'])
def test_a_model_config_records_stem_blocks_only_when_set_and_rebuilds_the_same_model(name):
    common = dict(vit_size='nano', img_size=32, patch_size=8, patch_embed='hybrid', drop_path=0.0)
    if name == 'emma':
        common['dan'] = 'none'
    default = build_model(dict(name=name, **common))
    assert 'stem_blocks' not in default.config  # configs of ResNet-18's stem stay as they were
    model = build_model(dict(name=name, stem_blocks=[1, 2], **common))
    assert model.config['stem_blocks'] == [1, 2]
    rebuilt = build_model(json.loads(json.dumps(model.config)))
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    assert len(list(model.state_dict())) < len(list(default.state_dict()))


def test_unknown_vit_size_is_a_user_error():
    with pytest.raises(UserError, match='unknown ViT size'):
        build_vit('gigantic')


# ----------------------------------------------------------------------------------------------------------------
# EMMA and its frozen DAN
# ----------------------------------------------------------------------------------------------------------------

def test_optimizer_step_in_train_mode_leaves_every_dan_parameter_and_buffer_bit_identical():
    torch.manual_seed(0)
    model = EMMA('nano', img_size=32, drop_path=0.0)
    dan_before = {key: value.clone() for key, value in model.cnn.state_dict().items()}
    vit_head_before = model.vit.head[0].weight.clone()
    va_head_before = model.va_head[0].weight.clone()
    model.train()
    assert model.vit.training and not model.cnn.training
    assert not any(module.training for module in model.cnn.modules())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    loss = model(images(4, 32)).pow(2).mean()
    loss.backward()
    optimizer.step()
    assert all(parameter.grad is None and not parameter.requires_grad for parameter in model.cnn.parameters())
    for key, value in model.cnn.state_dict().items():
        assert torch.equal(value, dan_before[key]), key
    assert not torch.equal(model.vit.head[0].weight, vit_head_before)
    assert not torch.equal(model.va_head[0].weight, va_head_before)


def test_authors_dan_checkpoint_loads_and_gives_the_original_logits(tmp_path):
    state = random_dan_state(torch.Generator().manual_seed(1))
    path = tmp_path / 'affecnet8_epoch5.pth'
    torch.save({'iter': 5, 'model_state_dict': state}, path)
    dan = DAN(num_class=8).eval()
    log = []
    load_dan_weights(dan, path, log=log.append)
    x = images(3, 64)
    with torch.no_grad():
        logits, feature_map, heads = dan(x)
        expected = reference_dan_logits(state, x)
    assert logits.shape == (3, 8) and feature_map.shape == (3, 512, 2, 2) and heads.shape == (3, 4, 512)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert str(path) in log[0] and 'loaded' in log[0]


@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_authors_emma_checkpoint_loads_and_gives_the_original_outputs(tmp_path, prefix):
    state = authors_emma_state(torch.Generator().manual_seed(2), img_size=64)
    path = tmp_path / 'EMMA_MTL_1.2.pth'
    torch.save({'epoch': 7, 'model': with_prefix(state, prefix)}, path)
    model = EMMA('nano', img_size=64)
    log = []
    load_emma_checkpoint(model, path, log=log.append)
    model.eval()
    x = images(3, 64)
    with torch.no_grad():
        ours = model(x)
        expected = reference_emma_outputs(state, x)
    assert ours.shape == (3, 22)
    # The random weights give VA outputs in the hundreds; fp32 kernels that sum in another order (channels-last
    # convolutions, AVX2 vs AVX-512) differ there by a few 1e-5 relative.
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    assert 'epoch 7' in log[0]
    # the DAN weights came from the EMMA file
    torch.testing.assert_close(model.cnn.bn.running_var, state['cnn.bn.running_var'], atol=0, rtol=0)


def test_checkpoint_of_another_model_into_emma_lists_missing_and_unexpected_keys():
    cotex_state = CoTEX(2, 6, 'nano', img_size=32).state_dict()
    with pytest.raises(UserError) as error:
        load_emma_checkpoint(EMMA('nano', img_size=32), {'model': cotex_state})
    message = str(error.value)
    assert 'missing keys (vit.cls_token' in message and 'unexpected keys (vits.0.cls_token' in message
    assert '\n' not in message


# ----------------------------------------------------------------------------------------------------------------
# MAE weights
# ----------------------------------------------------------------------------------------------------------------

def mae_pretrain_checkpoint(vit):
    """An MAE pretrain file: encoder without head, plus mask token and decoder."""
    encoder = {key: value.clone() for key, value in vit.state_dict().items() if not key.startswith('head.')}
    dim = vit.embed_dim
    decoder = {'mask_token': torch.randn(1, 1, 64), 'decoder_embed.weight': torch.randn(64, dim),
               'decoder_pos_embed': torch.randn(1, 17, 64), 'decoder_blocks.0.norm1.weight': torch.ones(64),
               'decoder_norm.weight': torch.ones(64), 'decoder_pred.weight': torch.randn(768, 64)}
    return {'model': {**encoder, **decoder}}, encoder


def test_mae_pretrain_checkpoint_round_trip_ignores_decoder_keys(tmp_path):
    source = build_vit('nano', img_size=64, num_classes=0)
    checkpoint, encoder = mae_pretrain_checkpoint(source)
    path = tmp_path / 'mae_pretrain.pth'
    torch.save(checkpoint, path)
    target = build_vit('nano', img_size=64, num_classes=6)
    log = []
    report = load_mae_weights(target, path, log=log.append)
    target_state = target.state_dict()
    for key, value in encoder.items():
        assert torch.equal(target_state[key], value), key
    assert report['loaded'] == len(encoder)
    assert report['not_loaded'] == ['head.weight', 'head.bias']
    assert 'mask_token' in report['ignored'] and sum(key.startswith('decoder_') for key in report['ignored']) == 5
    assert target.head.weight.std() < 1e-4  # MAE fine-tuning starts the head near zero
    assert len(log) == 1 and '5 decoder keys' in log[0] and f'loaded {len(encoder)} tensors' in log[0]
    x = images(2, 64)
    source.eval()
    target.eval()
    assert torch.equal(target.forward_features(x), source.forward_features(x))


def test_mae_pretrain_into_average_pooling_vit_drops_final_norm_and_starts_fc_norm():
    checkpoint, _ = mae_pretrain_checkpoint(build_vit('nano', img_size=64))
    target = build_vit('nano', img_size=64, num_classes=6, global_pool=True)
    report = load_mae_weights(target, checkpoint, log=lambda line: None)
    assert {'norm.weight', 'norm.bias'} <= set(report['ignored'])
    assert {'fc_norm.weight', 'fc_norm.bias'} <= set(report['not_loaded'])


def test_finetuned_plain_state_dict_with_other_head_loads_backbone_and_keeps_new_head():
    source = build_vit('nano', img_size=64, num_classes=1000)
    target = build_vit('nano', img_size=64, num_classes=6)
    report = load_mae_weights(target, source.state_dict(), log=lambda line: None)
    assert 'head.weight' in report['ignored'] and report['not_loaded'] == ['head.weight', 'head.bias']
    assert torch.equal(target.blocks[3].mlp.fc2.weight, source.blocks[3].mlp.fc2.weight)


def test_position_embeddings_are_resampled_from_224_to_112(tmp_path):
    source = build_vit('nano', img_size=224)
    path = tmp_path / 'mae_224.pth'
    torch.save({'model': source.state_dict()}, path)
    target = build_vit('nano', img_size=112, num_classes=6)
    log = []
    report = load_mae_weights(target, path, log=log.append)
    assert report['pos_embed_resampled'] == ((14, 14), (7, 7))
    old = source.pos_embed.detach()
    grid = old[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    expected_grid = F.interpolate(grid, size=(7, 7), mode='bicubic', align_corners=False)
    expected = torch.cat([old[:, :1], expected_grid.permute(0, 2, 3, 1).reshape(1, 49, -1)], dim=1)
    torch.testing.assert_close(target.pos_embed.detach(), expected)
    assert '14x14 -> 7x7' in log[0]
    assert target(images(1, 112)).shape == (1, 6)


def test_wrong_size_checkpoint_error_lists_mismatched_keys_and_shapes():
    tiny = build_vit('tiny', img_size=32).state_dict()
    with pytest.raises(UserError) as error:
        load_mae_weights(build_vit('nano', img_size=32), {'model': tiny}, log=lambda line: None)
    message = str(error.value)
    # every shared tensor is narrower: 4 embedding tensors, 12 per block, the final norm's 2
    assert f'{4 + 12 * 4 + 2} shape mismatches (cls_token checkpoint (1, 1, 192) vs model (1, 1, 128)' in message
    assert 'patch_embed.proj.weight checkpoint (192, 3, 16, 16) vs model (128, 3, 16, 16)' in message
    assert 'unexpected keys (blocks.4.' in message  # tiny has 12 blocks, nano 4
    assert '\n' not in message


def test_checkpoint_missing_a_backbone_key_is_refused():
    state = build_vit('nano', img_size=32).state_dict()
    del state['blocks.1.mlp.fc1.weight']
    with pytest.raises(UserError, match=r'1 missing keys \(blocks\.1\.mlp\.fc1\.weight\)'):
        load_mae_weights(build_vit('nano', img_size=32), state, log=lambda line: None)


def test_mae_training_checkpoint_with_namespace_and_numpy_values_loads(tmp_path):
    import argparse

    path = tmp_path / 'checkpoint-799.pth'
    torch.save({'model': build_vit('nano', img_size=32).state_dict(), 'epoch': 799,
                'args': argparse.Namespace(model='mae_vit_base_patch16', blr=1.5e-4), 'loss': np.float64(0.3)}, path)
    report = load_mae_weights(build_vit('nano', img_size=32, num_classes=2), path, log=lambda line: None)
    assert report['loaded'] > 0


LOADERS = {
    'mae': (lambda: build_vit('nano', img_size=32), load_mae_weights),
    'dan': (DAN, load_dan_weights),
    'emma': (lambda: EMMA('nano', img_size=32), load_emma_checkpoint),
    'cotex': (lambda: CoTEX(2, 6, 'nano', img_size=32), load_cotex_checkpoint),
}


@pytest.mark.parametrize('loader', list(LOADERS))
def test_garbage_truncated_or_absent_files_are_user_errors_naming_the_file(tmp_path, loader):
    build, load = LOADERS[loader]
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'this is not a checkpoint at all' * 10)
    real = tmp_path / 'real.pth'
    torch.save({'model': {'cls_token': torch.zeros(1, 1, 128), 'pos_embed': torch.zeros(1, 5, 128)}}, real)
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    model = build()
    for path in (garbage, truncated, tmp_path / 'absent.pth'):
        with pytest.raises(UserError, match=path.name):
            load(model, path, log=lambda line: None)


# ----------------------------------------------------------------------------------------------------------------
# CoTEX
# ----------------------------------------------------------------------------------------------------------------

def original_cotex_checkpoint(generator, vit_num, img_size, prefix):
    states = [random_vit_state(NANO['embed_dim'], NANO['depth'], 16, img_size // 16,
                               {'head': (6, NANO['embed_dim'])}, generator) for _ in range(vit_num)]
    # the original also stored numpy metrics and its argparse values next to the weights
    checkpoint = {'epoch': 5, 'args': {'mask_rate': 0.5, 'vit_num': vit_num, 'val_folders': ['val']},
                  'train_acc': np.float64(61.2), 'val_f1_arr': [[np.float64(40.5)] * 6], 'train_loss': 0.7,
                  'state_dicts': [with_prefix(state, prefix + 'vit.') for state in states]}
    return checkpoint, states


@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_original_cotex_checkpoint_loads_and_gives_the_original_summed_logits(tmp_path, prefix):
    checkpoint, states = original_cotex_checkpoint(torch.Generator().manual_seed(3), 2, 64, prefix)
    path = tmp_path / 'checkpoint_5.pkl'
    torch.save(checkpoint, path)
    model = CoTEX(2, 6, 'nano', img_size=64)
    log = []
    load_cotex_checkpoint(model, path, log=log.append)
    model.eval()
    x = images(3, 64)
    with torch.no_grad():
        per_vit = model(x, mask_ratio=0.5)
        summed = model.predict(x)
        # the original evaluated with mask ratio 0: every patch kept, in shuffled order
        expected = [linear(state, 'head', reference_vit_tokens(state, x, NANO['num_heads'], 16, True)[:, 0])
                    for state in states]
    for ours, theirs in zip(per_vit, expected):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(summed, expected[0] + expected[1], atol=1e-5, rtol=1e-5)
    assert 'epoch 5' in log[0] and '2 ViTs' in log[0]


def test_cotex_checkpoint_with_another_number_of_vits_is_refused():
    checkpoint, _ = original_cotex_checkpoint(torch.Generator().manual_seed(4), 3, 32, '')
    with pytest.raises(UserError, match='holds 3 ViTs but the model has 2'):
        load_cotex_checkpoint(CoTEX(2, 6, 'nano', img_size=32), checkpoint)


def test_cotex_masks_each_vit_only_in_training_and_predict_sums_the_logits():
    torch.manual_seed(0)
    model = CoTEX(2, 6, 'nano', img_size=64, drop_path=0.0)
    seen = [blocks_input_recorder(vit) for vit in model.vits]
    x = images(2, 64)
    model.train()
    logits = model(x, mask_ratio=0.75)
    assert [tokens[0].shape[1] for tokens in seen] == [5, 5] and len(logits) == 2
    model.eval()
    first, second = model(x, mask_ratio=0.75)
    assert seen[0][-1].shape[1] == 17
    torch.testing.assert_close(model.predict(x), first + second, atol=0, rtol=0)


def test_cotex_mae_sources_are_shared_out_in_order(tmp_path):
    sources = []
    for name in ('a', 'b'):
        path = tmp_path / f'mae_{name}.pth'
        torch.save(mae_pretrain_checkpoint(build_vit('nano', img_size=32))[0], path)
        sources.append(path)
    model = CoTEX(4, 6, 'nano', img_size=32)
    reports = model.load_mae([str(path) for path in sources], log=lambda line: None)
    expected = [torch.load(path, weights_only=True)['model']['blocks.0.attn.qkv.weight'] for path in sources]
    for index, vit in enumerate(model.vits):
        assert torch.equal(vit.blocks[0].attn.qkv.weight, expected[index // 2])
    assert [report['source'] for report in reports] == [str(sources[0])] * 2 + [str(sources[1])] * 2
    one = CoTEX(2, 6, 'nano', img_size=32)
    one.load_mae(str(sources[1]), log=lambda line: None)
    assert all(torch.equal(vit.blocks[0].attn.qkv.weight, expected[1]) for vit in one.vits)
    with pytest.raises(UserError, match='cannot be shared out equally'):
        CoTEX(3, 6, 'nano', img_size=32).load_mae([str(path) for path in sources])


# ----------------------------------------------------------------------------------------------------------------
# Rebuilding from a saved config
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('config', [
    {'name': 'emma', 'vit_size': 'nano', 'img_size': 32, 'drop_path': 0.0, 'global_pool': False,
     'patch_size': None, 'patch_embed': 'linear'},
    {'name': 'cotex', 'vit_num': 3, 'num_classes': 6, 'vit_size': 'nano', 'img_size': 32, 'drop_path': 0.1,
     'global_pool': True, 'patch_size': 8, 'patch_embed': 'hybrid'},
])
def test_build_model_from_its_saved_config_and_state_dict_reproduces_it(tmp_path, config):
    model = build_model(config).eval()
    assert model.config == config
    path = tmp_path / 'last.pth'
    torch.save({'model': model.state_dict(), 'args': {'model': model.config}}, path)
    saved = torch.load(path, map_location='cpu', weights_only=True)
    rebuilt = build_model(json.loads(json.dumps(saved['args']['model']))).eval()
    rebuilt.load_state_dict(saved['model'])
    x = images(2, 32)
    with torch.no_grad():
        ours, theirs = model(x), rebuilt(x)
    if isinstance(ours, list):
        ours, theirs = torch.stack(ours), torch.stack(theirs)
    assert torch.equal(ours, theirs)


def test_unknown_model_name_or_config_entry_is_a_user_error():
    with pytest.raises(UserError, match='unknown model'):
        build_model({'name': 'resnet'})
    with pytest.raises(UserError, match='unknown entries'):
        build_model({'name': 'emma', 'vit_size': 'nano', 'depth': 3})


def test_emma_without_dan_feeds_the_vit_outputs_alone_to_the_va_head_and_rebuilds_from_its_config():
    torch.manual_seed(0)
    model = EMMA('nano', img_size=32, patch_size=8, dan='none').eval()
    assert model.cnn is None and not any(key.startswith('cnn.') for key in model.state_dict())
    assert model.config['dan'] == 'none' and 'dan' not in EMMA('nano', img_size=32, patch_size=8).config
    x = images(2, 32)
    with torch.no_grad():
        out = model(x)
        expr_au = model.vit(x)
        expected_va = model.va_head(expr_au)  # the VA head of the 20 ViT outputs, nothing else
    assert out.shape == (2, 22)
    torch.testing.assert_close(out[:, :2], expected_va)
    torch.testing.assert_close(out[:, 2:], expr_au)
    rebuilt = build_model(model.config)
    rebuilt.load_state_dict(model.state_dict())
    with pytest.raises(UserError, match='unknown DAN setting'):
        EMMA('nano', img_size=32, patch_size=8, dan='random')
