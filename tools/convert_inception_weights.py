"""Converts pytorch-fid's FID Inception weights to an .npz that ddpm-jax reads, without torch.

  python tools/convert_inception_weights.py pt_inception-2015-12-05-6726825d.pth inception.npz
  python tools/convert_inception_weights.py old.npz checked.npz      # .npz -> .npz re-check

The input is a torch state_dict file (zip or legacy layout, read by
`ddpm_jax.metrics.torch_pickle`) or an .npz. It is checked against the network (every key
present, every shape right, nothing extra but `num_batches_tracked`) and written as an
uncompressed .npz with pytorch-fid's key names and torch layouts (OIHW convolution weights,
(out, in) fc weight), float32. With torch at hand the same file is
`np.savez(out, **{k: v.numpy() for k, v in torch.load(pth).items()})`.

Get the weights (~91 MB) on a machine with internet from
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ddpm_jax.metrics import inception_weights  # pylint: disable=wrong-import-position


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def convert(in_path: str, out_path: str) -> dict[str, np.ndarray]:
  """Reads `in_path`, checks it against `InceptionV3`, writes `out_path`; returns the arrays."""
  if not os.path.isfile(in_path):
    raise FileNotFoundError(inception_weights.weights_help(in_path, 'the input'))
  state = inception_weights.read_weights_file(in_path)
  inception_weights.torch_state_dict_to_flax(state)  # Raises on missing / unexpected keys and shapes.
  arrays = {name: np.asarray(state[name], dtype=np.float32)
            for name in sorted(inception_weights.expected_torch_shapes())}
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  tmp = out_path + '.tmp'
  with open(tmp, 'wb') as f:  # A file object: np.savez would append '.npz' to a bare name.
    np.savez(f, **arrays)
  os.replace(tmp, out_path)
  return arrays


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('input', help="pytorch-fid's .pth (or an .npz to re-check)")
  parser.add_argument('output', help='.npz to write')
  args = parser.parse_args(argv)
  arrays = convert(args.input, args.output)
  digest = sha256(args.input)
  n_params = sum(v.size for k, v in arrays.items() if not k.endswith(('running_mean',
                                                                         'running_var')))
  print(f'{args.input}: sha256 {digest}'
        + ('' if digest.startswith(inception_weights.FID_WEIGHTS_SHA256_PREFIX) else
           f' (pytorch-fid\'s published .pth starts with {inception_weights.FID_WEIGHTS_SHA256_PREFIX})'))
  print(f'wrote {args.output}: {len(arrays)} arrays, {n_params:,} parameters '
        f'(+ BatchNorm running statistics)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
