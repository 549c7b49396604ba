"""On-device augmentation and normalisation of uint8 NHWC batches, run inside the jitted step.

Pad-and-random-crop then horizontal flip, as torchvision's RandomCrop(padding=p,
padding_mode=...) and RandomHorizontalFlip do before ToTensor/Normalize: the padding is of raw
values (zeros, or the image reflected), normalisation comes last. No per-image work happens on
the host.
"""
import jax
import jax.numpy as jnp

# torchvision padding_mode -> jnp.pad mode. 'reflect' mirrors without repeating the edge pixel
# (numpy's 'reflect', not 'symmetric'), as torch's reflection padding does.
PAD_MODES = {'zeros': 'constant', 'reflect': 'reflect'}


def normalize(images, mean, std, dtype=jnp.float32):
  """uint8 (or float 0..255) images to (x - mean) / std per channel."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def random_crop_flip(key, images, pad: int, flip: bool, mode: str = 'zeros'):
  """Per-example random crop of the padded images back to their size, then random flip.

  `mode`: 'zeros' pads with value 0 (torchvision's default, the reference's pruning script),
  'reflect' mirrors the image at its border (the reference's training script).
  """
  if mode not in PAD_MODES:
    raise ValueError(f'unknown pad mode {mode!r}; expected one of {tuple(PAD_MODES)}')
  n, h, w, _ = images.shape
  crop_key, flip_key = jax.random.split(key)
  x = images
  if pad:
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=PAD_MODES[mode])
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
    x = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0),
                                                      (h, w, img.shape[-1])))(x, offsets)
  if flip:
    do = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
    x = jnp.where(do, x[:, :, ::-1, :], x)
  return x
