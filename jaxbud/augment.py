"""On-device augmentation and normalisation of uint8 NHWC batches, run inside the jitted step.

Pad-and-random-crop then horizontal flip, as torchvision's RandomCrop(padding=p) and
RandomHorizontalFlip do before ToTensor/Normalize: padding is with raw value 0, normalisation
comes last. No per-image work happens on the host.
"""
import jax
import jax.numpy as jnp


def normalize(images, mean, std, dtype=jnp.float32):
  """uint8 (or float 0..255) images to (x - mean) / std per channel."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def random_crop_flip(key, images, pad: int, flip: bool):
  """Per-example random crop of the zero-padded images back to their size, then random flip."""
  n, h, w, _ = images.shape
  crop_key, flip_key = jax.random.split(key)
  x = images
  if pad:
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
    x = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0),
                                                      (h, w, img.shape[-1])))(x, offsets)
  if flip:
    do = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
    x = jnp.where(do, x[:, :, ::-1, :], x)
  return x
