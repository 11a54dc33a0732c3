"""Writes chapters/12_text_to_image.ipynb (unexecuted); run it from the repository root, then execute the notebook:

    .venv/bin/python scripts/build_ch12.py
    DIFFEDU_STATIC=1 .venv/bin/jupyter nbconvert --to notebook --execute --inplace chapters/12_text_to_image.ipynb
    .venv/bin/python -m diffedu.exercises --tag chapters/12_text_to_image.ipynb
"""
from chapter_kit import Chapter

ch = Chapter()
md, code = ch.md, ch.code

md(r"""
# 12 · Text to image: multimodal guidance

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/diffedu/diffedu/blob/main/chapters/12_text_to_image.ipynb)

Chapter 11 guided a digits model with a class label, one of ten ids. A caption is a richer condition: a sequence
of words, each of which may change a different part of the picture. Text-to-image models such as GLIDE
{cite}`nichol2022glide`, Imagen {cite}`saharia2022photorealistic` and Stable Diffusion
{cite}`rombach2022highresolution` all use the same three ideas:

1. a **text encoder** turns the caption into one vector per token;
2. the denoising UNet reads those vectors through **cross-attention**: every pixel asks which words concern it;
3. **classifier-free guidance** on the caption {cite}`ho2022classifierfree`: the net also learns the empty
   caption, and sampling extrapolates from "no caption" towards "this caption".

This chapter builds all three at toy size, on a data set where we can check every sample: coloured shapes with
captions such as "a large red circle at the top left".

**You will learn to**

- tokenize captions with a fixed vocabulary, and map unknown words to `<unk>` instead of crashing;
- write cross-attention, $\mathrm{softmax}(QK^\top/\sqrt d)\,V$ with queries from the image and keys and values
  from the text, and read its attention maps;
- train a text encoder and a UNet together with caption dropout, and guide them with CFG;
- measure whether samples agree with their captions, on captions the model has never seen, and see which
  compositions work and which fail.
""")

ch.setup(r"""
import math
import matplotlib.pyplot as plt
import numpy as np
import torch

from diffedu import shapes, viz
from diffedu.ddim import ddim_sample
from diffedu.guidance import ClassifierFreeGuidance, drop_labels
from diffedu.nets import TextEncoder, TextToImageUNet, Tokenizer
from diffedu.nets.unet import CrossAttentionBlock
from diffedu.pretrained import load_pretrained, pretrained_info
from diffedu.schedules import linear_schedule
from diffedu.utils import setup, show_source
""")

md(r"""
## 12.1 A captioned data set we can check

`diffedu.shapes` draws one shape on a black 16×16 RGB canvas and writes its caption. There are four shapes, four
colours, four positions (the quadrant of the shape's centre) and two sizes; the size word appears in only half
the captions, so "a red circle at the top left" means either size. Each render jitters the centre and the
radius a little and anti-aliases the edges, so no two images are the same.
""")

code(r"""
print("shapes:", shapes.SHAPES, "\ncolours:", shapes.COLOURS, "\npositions:", shapes.POSITIONS, "\nsizes:", shapes.SIZES)
examples = shapes.make_shapes(12, split="train", seed=3)
fig, axes = plt.subplots(2, 6, figsize=(viz.BOOK_WIDTH_IN, 3.4))
for ax, image, caption in zip(axes.flat, examples.x, examples.captions):
    ax.imshow(viz.tile_images(image[None], padding=0), interpolation="nearest")
    ax.set_title(caption.replace(" at the ", "\nat the "), fontsize=7.5)
    ax.set_axis_off()
fig.suptitle("Captioned shapes: 16×16 RGB images and their captions")
plt.show()
""")

md(r"""
**Held-out combinations.** Eight (colour, shape, position) triples never appear in training, in either size. Each
of their *pairs* does appear: red circles are seen, but only away from the top left; things at the top left are
seen, but no red circle there. Asking for a held-out triple therefore tests whether the model **composes**
attributes it learned separately, rather than recalling a picture it has seen.
""")

code(r"""
for colour, shape, position in shapes.HELD_OUT:
    print(f"held out: a {colour} {shape} at the {position}")
train_specs = shapes.make_shapes(20_000, split="train", seed=0).specs  # the recipe's training set
print(f"\n{len({s.triple for s in train_specs})} of {4 * 4 * 4} triples occur in the 20,000 training images; "
      f"held-out triples among them: {len({s.triple for s in train_specs} & set(shapes.HELD_OUT))}")
""")

md(r"""
**A probe reads the captions back.** To score a generated image we need to know what it shows.
`shapes.ShapesProbe` reads position from the centroid of the bright pixels, colour from their mean RGB (the
nearest palette colour), and shape and size with a small logistic regression trained on clean renders. On fresh
clean and slightly noisy renders it agrees with the caption almost always, so its verdict on samples measures the
model, not the probe.
""")

code(r"""
probe = shapes.shapes_probe()
fresh = shapes.make_shapes(1000, split="all", seed=11)
noisy = fresh.x + 0.1 * torch.randn(fresh.x.shape, generator=torch.Generator().manual_seed(0))
for name, images in (("clean renders", fresh.x), ("renders + N(0, 0.1^2) noise", noisy)):
    agree = probe.agreement(images, fresh.captions)
    print(f"{name:>29}: " + ", ".join(f"{k} {v:.1%}" for k, v in agree.items()))
""")

md(r"""
## 12.2 From words to vectors

**Tokens.** The tokenizer lower-cases the caption, splits it into words and looks each one up in a fixed
vocabulary: the 17 words of the captions, plus two special tokens. `<pad>` (id 0) fills every caption up to
`max_len` = 10 tokens, and `<unk>` (id 1) stands for any word outside the vocabulary. A prompt with a word the
model never saw does not crash: the word becomes `<unk>`, and the model simply learns nothing from it. An empty
caption is refused with a clear error. The empty caption is the *null condition* of guidance, and we never ask
for it by accident.
""")

code(r"""
tok = Tokenizer(shapes.VOCABULARY, max_len=10)
ids = tok.encode(["a large red circle at the top left", "a purple circle at the top left, please"])
print("vocabulary:", tok.words)
print("ids:\n", ids)
print("decoded:", tok.decode(ids))
try:
    tok.encode([""])
except ValueError as error:
    print("empty caption ->", error)
""")

md(r"""
**The text encoder** is a small Transformer {cite}`vaswani2017attention`. It adds a learned position vector to each
word vector and runs two encoder layers of self-attention, so each output vector can depend on the whole
caption: "red" next to "circle" can mean something different from "red" next to "square". The result is the
*context* $c \in \mathbb R^{T \times d}$ with $T = 10$ tokens of $d = 32$ numbers. Like Stable Diffusion, we
use no padding mask: `<pad>` is an ordinary learned token, so the all-`<pad>` empty caption needs no special case.
Imagen freezes a large pretrained language model (T5) here. Ours is trained from scratch together with the UNet,
which is enough for a 17-word language.
""")

code(r"""
show_source(TextEncoder)
""")

md(r"""
## 12.3 Cross-attention: every pixel asks the caption

Self-attention (chapter 1's UNet, at its lowest resolution) lets pixels look at other pixels. **Cross-attention**
lets them look at the words. For image features $h \in \mathbb R^{HW \times C}$ (one row per pixel) and the
context $c \in \mathbb R^{T \times d}$ {cite}`rombach2022highresolution`:

$$
Q = \mathrm{GN}(h)\, W_Q, \qquad K = c\, W_K, \qquad V = c\, W_V, \qquad
h \leftarrow h + \mathrm{softmax}\!\Big(\frac{Q K^\top}{\sqrt{d_h}}\Big) V\, W_O .
$$

The attention matrix has one row per pixel and one column per token, and each row sums to 1. It says how much
each pixel listens to each word. Our UNet runs a cross-attention block after every residual block, at 16×16, 8×8
and 4×4, with 4 heads. It also adds the mean of the context vectors to the time embedding, the "pooled" text
embedding of Imagen {cite}`saharia2022photorealistic`, so that global facts such as the colour can reach every
block directly. The output projection $W_O$ starts at zero, so an untrained block is the identity.
""")

code(r"""
show_source(CrossAttentionBlock.forward)
""")

md(r"""
`TextToImageUNet` joins the two pieces. Its `forward(x, t, cond)` keeps the library's contract
`net(x, t, cond)`: `cond` holds token ids (B, 10), `None` means the empty caption, and every sampler of the book
runs it unchanged.
""")

code(r"""
show_source(TextToImageUNet.forward)
""")

md(r"""
## 12.4 Training with caption dropout

Training is chapter 1's noise-prediction loss with the caption as the condition. As in chapter 11, a fraction
$p_\text{uncond} = 0.1$ of captions is replaced by the empty caption, so the same network also learns the
unconditional model that guidance needs. `drop_labels` does this for token rows: a dropped caption becomes all
`<pad>`. The shipped checkpoint `text_shapes` was trained by the committed recipe below
(`python -m diffedu.recipes text_shapes`). That takes over an hour on a laptop CPU, so here we load it. Set
`retrain = True`, or run in full mode on a GPU, to train it here instead.
""")

code(r"""
from diffedu.recipes import text_shapes
show_source(text_shapes)
""")

code(r"""
retrain = cfg.full
if retrain:
    from diffedu.recipes import TextShapesConfig
    text_shapes(TextShapesConfig(), device=str(device))
info = pretrained_info("text_shapes")
model = load_pretrained("text_shapes", device=device)
tc = info["train_config"]
n_text = sum(p.numel() for p in model.encoder.parameters())
n_cross = sum(p.numel() for name, p in model.unet.named_parameters() if "_cross" in name)
n_all = sum(p.numel() for p in model.parameters())
print(f"text_shapes: {n_all:,} parameters ({n_text:,} text encoder, {n_cross:,} cross-attention, "
      f"{n_all - n_text - n_cross:,} rest of the UNet), {info['size_bytes'] / 1e6:.1f} MB")
print(f"trained {info['steps']:,} steps of batch {tc['batch_size']} on {tc['train_images']:,} images, "
      f"p_uncond = {tc['p_uncond']}; final loss {tc['final_loss_mean_last_500']:.4f}")
print(f"recipe metric: {info['metric']['name']} = {info['metric']['value']}")
""")

md(r"""
## 12.5 Prompt to image

We sample with 25 steps of DDIM (chapter 4) and classifier-free guidance at scale $s = 3$:

$$
\hat\epsilon_s(x_t, c) = \hat\epsilon(x_t, \varnothing) + s\,\big(\hat\epsilon(x_t, c) - \hat\epsilon(x_t, \varnothing)\big),
$$

with $\varnothing$ the empty caption. `ClassifierFreeGuidance` from chapter 11 works unchanged: its null label is
the `<pad>` id, and replacing every token by it gives exactly the empty caption. We use DDIM's stochastic setting
$\eta = 1$; section 12.6 shows why.
""")

code(r"""
schedule = linear_schedule()
scale, steps, eta = 3.0, 25, 1.0


def generate(captions, scale=scale, seed=0, steps=steps, eta=eta):
    # CFG samples (B, 3, 16, 16) for a list of captions, one per caption, from seeded noise
    g = torch.Generator(device=device).manual_seed(seed)
    x_T = torch.randn(len(captions), 3, 16, 16, generator=g, device=device)
    guided = ClassifierFreeGuidance(model, scale, null_label=model.null_label)
    x = ddim_sample(guided, x_T, schedule, steps=steps, eta=eta, cond=model.tokenize(captions), generator=g,
                    progress=False)
    return x.clamp(-1, 1).cpu()


def show_prompts(prompts, samples_each, title, seed=0, scale=scale):
    # one row of samples per prompt, the prompt written on the left
    captions = [p for p in prompts for _ in range(samples_each)]
    x = generate(captions, scale=scale, seed=seed)
    fig, axes = plt.subplots(len(prompts), samples_each, squeeze=False,
                             figsize=(viz.BOOK_WIDTH_IN, 0.62 * len(prompts) + 0.45))
    for k, image in enumerate(x):
        ax = axes[k // samples_each, k % samples_each]
        ax.imshow(viz.tile_images(image[None], padding=0), interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for ax, prompt in zip(axes[:, 0], prompts):
        ax.set_ylabel(prompt, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    plt.show()
    return x


seen_prompts = ["a large red square at the bottom left", "a small green circle at the top right",
                "a blue cross at the top left", "a yellow triangle at the bottom right"]
_ = show_prompts(seen_prompts, 8, f"Seen combinations (CFG s = {scale:g}, {steps} DDIM steps, η = {eta:g})")
""")

md(r"""
Now the held-out triples: no training image showed any of them.
""")

code(r"""
held_prompts = [f"a {c} {s} at the {p}" for c, s, p in shapes.HELD_OUT]
_ = show_prompts(held_prompts, 8, "Held-out combinations: never seen in training", seed=1)
""")

md(r"""
**How often does a sample match its caption?** The probe reads every sample. Below, 24 held-out captions (each
held-out triple without a size word, and with each size) and 24 seen captions, several samples each.
""")

code(r"""
from diffedu.recipes import held_out_captions, seen_captions  # 24 held-out and 24 seen captions

per_caption = 8 if cfg.full else 2
agreement = {}
for split, captions in (("held-out", held_out_captions()), ("seen", seen_captions())):
    captions = [c for c in captions for _ in range(per_caption)]
    agreement[split] = probe.agreement(generate(captions, seed=2), captions)
    print(f"{split:>8} captions ({len(captions)} samples): "
          + ", ".join(f"{k} {v:.1%}" for k, v in agreement[split].items()))
""")

md(r"""
The attributes of the held-out triples were each learned from other combinations, and the model puts them
together. Compositional generalisation of this kind is what lets a real text-to-image model draw "an astronaut
riding a horse" without such a photo in its training set. It is also fragile, as section 12.8 shows.

## 12.6 The sampler matters: deterministic against stochastic

The recipe first measured its model with deterministic DDIM ($\eta = 0$, the probability-flow ODE). Many of
those samples carry coloured speckle on the background, and the probe agreed less often. The same network with
$\eta = 1$ gives clean backgrounds. A small network's $\hat\epsilon$ has errors; the deterministic sampler
carries every error to the end, while the fresh noise of a stochastic sampler lets later steps correct earlier
mistakes. {cite:t}`karras2022elucidating` make the same observation for large image models. Below: the same
captions and starting noise, both samplers. "Speckled" counts the samples whose dark background (pixels with
brightness below 0.5) has a mean brightness above 0.06; a clean render has 0.
""")

code(r"""
def speckled(x):
    # fraction of images whose background (brightness < 0.5) has mean brightness > 0.06
    b = ((x + 1) / 2).amax(dim=1)                                       # (N, 16, 16) brightness
    background = (b < 0.5).float()
    level = (b * background).sum(dim=(1, 2)) / background.sum(dim=(1, 2)).clamp(min=1)
    return (level > 0.06).float().mean().item()


compare_captions = [c for c in held_out_captions() for _ in range(2)]
x_eta = {}
for eta_ in (0.0, 1.0):
    x_eta[eta_] = generate(compare_captions, seed=7, eta=eta_)
    agree = probe.agreement(x_eta[eta_], compare_captions)
    print(f"eta = {eta_:g}: speckled {speckled(x_eta[eta_]):.0%}, probe agrees: shape+colour "
          f"{agree['shape+colour']:.0%}, all {agree['all']:.0%}  ({len(compare_captions)} held-out samples)")
viz.image_grid(torch.cat([x_eta[0.0][:8], x_eta[1.0][:8]]), nrow=8, pad_value=0.6,
               title="Same noise, same captions: deterministic DDIM (top) and η = 1 (bottom)")
plt.show()
""")

md(r"""
## 12.7 The guidance scale

Without guidance ($s = 0$) the model ignores the caption and the probe agrees only by chance. At $s = 1$ it
samples the plain conditional model, and on this tiny language that is already almost always right, so a larger
$s$ cannot buy much agreement. What it does change is *diversity*. A caption without a size word leaves the size
open, and in the training data such captions show small and large shapes equally often. So an honest sampler
should draw about half of each. We ask for the eight held-out triples without a size word, four samples each,
and count how many come out small.
""")

code(r"""
scales = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
sweep_captions = [f"a {c} {s} at the {p}" for c, s, p in shapes.HELD_OUT for _ in range(8 if cfg.full else 4)]
sweep = {}
for s in scales:
    x_sw = generate(sweep_captions, scale=s, seed=3)
    small = np.mean([r["size"] == "small" for r in probe.read(x_sw)])
    sweep[s] = {**probe.agreement(x_sw, sweep_captions), "small": small}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(viz.BOOK_WIDTH_IN, 2.8))
for key, marker in (("colour", "o"), ("shape", "s"), ("position", "^"), ("all", "D")):
    ax1.plot(scales, [sweep[s][key] for s in scales], marker=marker, label=key)
ax1.set(xlabel="guidance scale s", ylabel="agreement with the caption", ylim=(0, 1.03),
        title="Fidelity: probe agreement")
ax1.legend(fontsize=8)
ax2.plot(scales, [sweep[s]["small"] for s in scales], marker="o", color="C4", label="samples")
ax2.axhline(0.5, color="k", ls="--", lw=1, label="training data")
ax2.set(xlabel="guidance scale s", ylabel="fraction read as small", ylim=(0, 1.03),
        title="Diversity: size left open by the caption")
ax2.legend(fontsize=8)
fig.suptitle(f"Held-out triples without a size word, {len(sweep_captions)} samples per scale")
plt.show()
for s in scales:
    print(f"s = {s:>3g}: " + ", ".join(f"{k} {sweep[s][k]:.0%}" for k in ("colour", "shape", "position", "all"))
          + f"; read as small {sweep[s]['small']:.0%}")
""")

md(r"""
Fidelity saturates at $s pprox 1$–2, and past it guidance only removes diversity: the open size collapses onto
"large", the more typical answer, and at $s = 8$ the shapes start to show striped artefacts. This is the
fidelity–diversity trade-off of chapter 11 in a form we can count. Our default $s = 3$ is on the safe side for
agreement and pays for it with the size; $s \approx 1$–1.5 is the better compromise for this model.
""")

code(r"""
prompt = "a blue triangle at the top right"
x_s = torch.stack([generate([prompt] * 3, scale=s, seed=4) for s in scales], dim=1)  # (3, scales, 3, 16, 16)
viz.image_grid(x_s.flatten(0, 1), nrow=len(scales), pad_value=0.6,
               labels=[f"s = {s:g}" for s in scales] * 3,
               title=f"'{prompt}' (held out): three seeds (rows) at each scale (columns)")
plt.show()
""")

md(r"""
## 12.8 Compositions that work, and some that fail

The model composes attributes *within* the language it was trained on. Outside it, the failures are instructive:

- an **unknown word** becomes `<unk>`, so "a purple circle" gets a colour the model makes up. Below it blends
  the colours it knows into a yellow-green;
- a **missing attribute** ("a red circle", no position) never occurred in a caption. Here the model puts the
  circle anywhere, which is a reasonable reading, but nothing taught it to;
- **two objects** ("a red circle and a blue square") were never shown: every training image has one shape. The
  model draws one of them, here the blue square, and drops the other. This is a miniature of the "catastrophic
  neglect" and attribute-binding failures of large models {cite}`chefer2023attend`;
- **word order**: "at the left top" was never seen, but both position words are there, and the encoder's
  self-attention reads them together.
""")

code(r"""
probes_fail = ["a red circle at the top left",        # held out, inside the language
               "a purple circle at the top left",     # unknown colour -> <unk>
               "a red circle",                        # no position
               "a red circle and a blue square",      # two objects
               "a red circle at the left top"]        # unusual word order
print("tokens as the model sees them:")
for p in probes_fail:
    print(f"  {p!r:38} -> {tok.decode(tok.encode([p]))[0]!r}")
_ = show_prompts(probes_fail, 8, "Inside and outside the training language", seed=5)
""")

md(r"""
## 12.9 Where do the words land? Cross-attention maps

Every cross-attention block keeps its last attention weights, shaped (B, heads, H·W, T): for each pixel, a
distribution over the caption's tokens; `model.cross_attention_maps()` collects them. We noise a generated
image halfway ($t = 0.5$), run the model once, and average the maps of the full-resolution (16×16) blocks over
heads and 8 samples. Each panel shows, for one token, how strongly each pixel attends to it. These are the
maps that Prompt-to-Prompt {cite}`hertz2023prompt` edits to change one word of a prompt while keeping the layout.
""")

code(r"""
def word_maps(caption, n=8, t=0.5, seed=6):
    # mean attention (16x16) of each token of `caption`, over heads, 16x16 blocks and n samples
    x0 = generate([caption] * n, seed=seed).to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    alpha, sigma = schedule.coefficients(torch.tensor([t]), x0)
    x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=g, device=device)
    with torch.no_grad():
        model(x_t, torch.full((n,), t, device=device), model.tokenize([caption] * n))
    full = [w for w in model.cross_attention_maps() if w.shape[2] == 16 * 16]  # (n, heads, 256, T) each
    maps = torch.stack(full).mean(dim=(0, 1, 2)).reshape(16, 16, -1).cpu()       # (16, 16, T)
    return x0.cpu(), maps


for caption in ("a large yellow circle at the bottom left", "a small red cross at the top right"):
    x0, maps = word_maps(caption)
    words = tok.split(caption)
    fig, axes = plt.subplots(1, len(words) + 2, figsize=(viz.BOOK_WIDTH_IN, 1.45))
    axes[0].imshow(viz.tile_images(x0[:1], padding=0), interpolation="nearest")
    axes[0].set_title("sample", fontsize=8)
    for ax, k in zip(axes[1:], range(len(words) + 1)):
        label = words[k] if k < len(words) else "<pad>"
        ax.imshow(maps[:, :, k], cmap="magma", vmin=0, vmax=float(maps.max()), interpolation="nearest")
        ax.set_title(label, fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"Cross-attention at 16×16 for '{caption}' (mean over heads and 8 samples, t = 0.5)",
                 fontsize=9)
    plt.show()
""")

md(r"""
Read the maps with care. Attention weights say where a token's *value* vector is mixed in, not what the model
"thinks". In a 17-word language many tokens carry the same information (the encoder's self-attention has
already spread "red" over the other positions), so several words can share a map. Here the colour word is the
clearest: the pixels of the shape attend to "yellow" or "red", exactly where that colour must be painted. Most
other attention goes to "a", "the" and `<pad>`, tokens that carry almost nothing. Such low-information tokens
often act as a default place to put attention, in large models as in ours.

## Exercises

Each exercise has a code cell for your answer (in the book the solution is folded away; click to show it) and a
check cell that compares it with the library or a closed form.

**Exercise 12.1: caption dropout.** Write `drop_captions(ids, p, generator)`. It takes token ids (B, T) and
replaces each *whole row* by the empty caption (all zeros, the `<pad>` id) with probability `p`. Draw one uniform
number per row with `torch.rand(B, generator=generator)`, and drop the rows where it is below `p`. The check
compares with the library's `drop_labels` and checks the drop rate.
""")

code(r"""
def drop_captions(ids, p, generator):
    ### BEGIN SOLUTION
    drop = torch.rand(ids.shape[0], generator=generator) < p
    return torch.where(drop[:, None], torch.zeros_like(ids), ids)
    ### END SOLUTION
""")

code(r"""
# check: same rows as the library, whole rows only, and the drop rate
ids_c = torch.randint(2, len(tok), (4000, 10))
mine = drop_captions(ids_c, 0.2, torch.Generator().manual_seed(0))
assert torch.equal(mine, drop_labels(ids_c, 0.2, 0, generator=torch.Generator().manual_seed(0)))
empty = (mine == 0).all(dim=1)
assert torch.equal(mine[~empty], ids_c[~empty])
assert abs(empty.float().mean().item() - 0.2) < 0.02
print("Exercise 12.1 passed")
""")

md(r"""
**Exercise 12.2: cross-attention weights.** Write `attention_weights(q, k)`. It takes queries $Q$ (HW, d) from the
pixels and keys $K$ (T, d) from the tokens, and returns the (HW, T) matrix $\mathrm{softmax}(QK^\top/\sqrt d)$ of
one head. The check compares with a library block's own weights and checks that each row is a distribution.
""")

code(r"""
def attention_weights(q, k):
    ### BEGIN SOLUTION
    return torch.softmax(q @ k.T / math.sqrt(q.shape[1]), dim=1)
    ### END SOLUTION
""")

code(r"""
# check: against CrossAttentionBlock (head 0 of batch row 0), rows sum to 1
torch.manual_seed(0)
block = CrossAttentionBlock(channels=16, context_dim=8, num_heads=2, groups=4)
h_img, ctx = torch.randn(1, 16, 4, 4), torch.randn(1, 5, 8)
block(h_img, ctx)
q0 = block.to_q(block.norm(h_img)).reshape(1, 2, 8, 16)[0, 0].T  # (HW, d) of head 0
k0 = block.to_k(ctx).reshape(1, 5, 2, 8)[0, :, 0]                 # (T, d) of head 0
w_mine = attention_weights(q0, k0)
assert w_mine.shape == (16, 5)
assert torch.allclose(w_mine, block.last_weights[0, 0], atol=1e-6)
assert torch.allclose(w_mine.sum(1), torch.ones(16))
print("Exercise 12.2 passed")
""")

md(r"""
**Exercise 12.3: guidance on a caption.** Write `guided_eps(net, x, t, ids, s)`. It returns the CFG prediction
$\hat\epsilon(x, \varnothing) + s\,(\hat\epsilon(x, c) - \hat\epsilon(x, \varnothing))$ of the text model `net`,
where the empty caption $\varnothing$ is all-`<pad>` token ids of the same shape as `ids`. The check compares with
`ClassifierFreeGuidance` on the shipped model, and checks that $s = 0$ ignores the caption.
""")

code(r"""
def guided_eps(net, x, t, ids, s):
    ### BEGIN SOLUTION
    eps_c = net(x, t, ids)
    eps_u = net(x, t, torch.zeros_like(ids))
    return eps_u + s * (eps_c - eps_u)
    ### END SOLUTION
""")

code(r"""
# check: the library's wrapper, and s = 0 is the unconditional model
x_c = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)).to(device)
t_c = torch.full((3,), 0.4, device=device)
ids_g = model.tokenize(["a red circle at the top left", "a blue cross", "a small yellow square at the bottom right"])
with torch.no_grad():
    for s in (0.0, 1.0, 4.0):
        assert torch.allclose(guided_eps(model, x_c, t_c, ids_g, s),
                              ClassifierFreeGuidance(model, s, null_label=0)(x_c, t_c, ids_g), atol=1e-4)
    assert torch.allclose(guided_eps(model, x_c, t_c, ids_g, 0.0), model(x_c, t_c), atol=1e-5)
print("Exercise 12.3 passed")
""")

md(r"""
## Summary

- A text-to-image diffusion model is a conditional denoiser whose condition is a sequence of token vectors. A
  tokenizer maps words to ids (unknown words to `<unk>`), and a text encoder turns them into context vectors.
- Cross-attention, $\mathrm{softmax}(QK^\top/\sqrt d)V$ with queries from pixels and keys and values from tokens,
  lets each pixel read the words that concern it. Its weights can be drawn as per-word maps.
- Caption dropout teaches the same network the empty caption, and classifier-free guidance on the caption
  trades diversity for agreement, exactly as with class labels.
- Trained on single shapes, the model composes colour, shape and position into combinations it never saw, as
  the probe measures above. Two objects, missing attributes and unknown words lie outside its language, and
  there it fails in the ways large models fail.

Next: chapter 13 edits existing images (SDEdit and inpainting) with the same samplers.
""")

ch.write("chapters/12_text_to_image.ipynb")
