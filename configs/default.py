"""Base configuration shared by every ddpm-jax config.

Every other file in `configs/` imports `get_config()` from here and overrides a few fields.
Field names are a public interface: external tools read `config.data.*`, `config.model.*`,
`config.diffusion.*`, `config.optim.*`, `config.train.*` and `config.sample.*`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Input pipeline.
  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'cifar10'  # cifar10 | oxford_flowers102 | celeb_a_hq | celeb_a | lsun/church
  #                           | fashion_mnist | folder
  data.image_size = 32
  data.channels = 3
  data.random_flip = True
  data.data_dir = ''  # tfds data_dir, the folder of images for `folder`, or Fashion-MNIST IDX files.
  data.split = 'train'
  # Processes that decode and resize training images (0: threads of the training process).
  data.worker_processes = 0

  # U-Net (Ho et al. 2020, appendix B).
  config.model = model = ml_collections.ConfigDict()
  model.ch = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.dropout = 0.1
  model.num_groups = 32
  model.resamp_with_conv = True
  model.remat = False  # Recompute each ResnetBlock/AttnBlock in the backward pass (memory).
  model.num_classes = 0  # > 0: class-conditional (label embedding + a null label for CFG).
  # What the network computes with (ddpm_jax/kernels/): xla = stock JAX on every platform;
  # cpu = oneDNN convolutions and a fused GroupNorm (one CPU device); auto = cpu on one CPU
  # device in float32, xla elsewhere. Same parameters and function with each.
  model.kernels = 'auto'

  # Forward process and objective.
  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = 'linear'  # linear | quadratic | cosine | const
  diffusion.num_timesteps = 1000
  diffusion.beta_start = 1e-4
  diffusion.beta_end = 0.02
  diffusion.mean_type = 'eps'  # eps | x0 | mu | v (what the network predicts)
  # fixedlarge | fixedsmall | learned | learned_range (learned: the U-Net outputs 2x channels).
  diffusion.var_type = 'fixedlarge'
  diffusion.loss = 'mse'  # mse (L_simple, eq. 14) | kl (L_vlb, eq. 5) | hybrid (N&D 2021)
  diffusion.hybrid_lambda = 0.001  # lambda of L_hybrid = L_simple + lambda L_vlb.
  diffusion.min_snr_gamma = 0.0  # > 0: min-SNR-gamma loss weighting (mse/hybrid; eps|x0|v).
  diffusion.importance_sampling = False  # loss=kl: sample t by the loss history (N&D 3.3).

  # Optimiser.
  config.optim = optim = ml_collections.ConfigDict()
  optim.lr = 2e-4
  optim.warmup_steps = 5000
  optim.grad_clip = 1.0
  optim.ema_decay = 0.9999
  # EMA warm-up: decay min(ema_decay, (1 + step) / (10 + step)), so that short runs' averages
  # hold no trace of the random initialisation (off: the paper's CIFAR-10 setting).
  optim.ema_warmup = False
  optim.adam_eps = 1e-8
  optim.adam_b1 = 0.9
  optim.adam_b2 = 0.999

  # Training loop.
  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 128  # Global batch, across every device and process.
  train.num_steps = 800_000
  train.log_every = 100
  train.sample_every = 10_000
  train.checkpoint_every = 5_000
  train.keep_checkpoints = 3
  # A second, frequent checkpoint stream (workdir/checkpoints_preempt, only the newest kept) so
  # that a preempted or crashed run loses at most this many steps; 0 disables it. SIGTERM always
  # saves there. Resuming picks the newest checkpoint of both streams.
  train.preemption_every = 1_000
  # Device mesh (data, fsdp) sizes, -1 = the remaining devices: (-1, 1) is pure data
  # parallelism; (-1, 4) also splits parameters and optimizer state over groups of 4 devices.
  train.mesh_shape = (-1, 1)
  # Split each batch into this many micro-batches, averaging their gradients (lax.scan in the
  # jitted step): the same update as the full batch with 1/grad_accum_steps of the activations.
  train.grad_accum_steps = 1
  # Mixed precision: 'bfloat16' runs the network's convolutions, matmuls and attention in
  # bf16; parameters, gradients, Adam state, EMA, GroupNorm and softmax stay float32.
  train.compute_dtype = 'float32'
  # Train steps per dispatch (one jitted lax.scan over this many batches): fewer host round
  # trips for small models on fast accelerators. Logging, checkpoints, samples and evaluation
  # happen at the end of the dispatch that reaches their step.
  train.steps_per_dispatch = 1
  # Sum the devices' gradients in a fixed order (all-gather, then add in device order) instead
  # of an all-reduce, whose order depends on the collective's implementation: the parameters
  # are then bitwise independent of how the devices are split into processes. Needs
  # mesh_shape (-1, 1); costs memory and bandwidth, so it is for reproducibility checks.
  train.exact_reduction = False
  train.seed = 0
  train.num_sample_grid = 64  # Images in each training-time sample grid.
  train.label_dropout = 0.1  # Class-conditional models: P(label -> null) for guidance.

  # Sampling (`--mode=sample`).
  config.sample = sample = ml_collections.ConfigDict()
  sample.num = 64
  sample.batch_size = 64
  sample.clip_denoised = True
  sample.seed = 0
  sample.use_ema = True
  sample.mode = 'grid'  # grid | progressive (Fig. 6) | interpolate (Fig. 8) | reconstruct
  #                       | inpaint | colorize | edit (ddpm_jax/editing_job.py)
  sample.sampler = 'ancestral'  # ancestral (Algorithm 2) | ddim
  sample.steps = 0  # Sampling steps, evenly respaced over T; 0 = all T.
  sample.eta = 0.0  # DDIM stochasticity (0 = deterministic, 1 = ancestral-like).
  sample.guidance_scale = 0.0  # Classifier-free guidance w: (1 + w) eps_cond - w eps_uncond.
  sample.label = -1  # Class-conditional models: this class, or -1 = classes 0, 1, .. in turn.
  sample.progressive_frames = 10  # mode=progressive: saved steps (grid columns, GIF frames).
  sample.interp_t = 500  # mode=interpolate: timestep t of the latents (q_sample, eq. 4).
  sample.interp_lambdas = 9  # mode=interpolate: lambda = 0, .., 1 in this many values.
  sample.data_split = 'test'  # mode=interpolate/reconstruct/inpaint/colorize/edit: input split.
  sample.input_dir = ''  # mode=inpaint/colorize/edit: a folder of input images ('' = data_split).
  # mode=inpaint: center | left | strokes, or a mask PNG / folder of them (white = keep).
  sample.mask = 'center'
  sample.t0 = 500  # mode=edit (SDEdit): noise the input to step t0 in [1, T], then denoise.
  # mode=inpaint/colorize, RePaint resampling: every jump_length steps, go back up
  # jump_length steps and down again, resample times in all (1 = off; RePaint: 10 and 10).
  sample.resample = 1
  sample.jump_length = 10

  # Evaluators (`ddpm_jax/evaluators/`), as big_vision's `config.evals`: each entry names its
  # `type`; `every` > 0 runs it during training every this many steps. `train_*` sizes serve
  # training-time evaluation and a sweep's final evaluation; `num_*` sizes the `--mode=eval`
  # job. At most one evaluator per type (their results share eval_results.csv's columns).
  config.evals = evals = ml_collections.ConfigDict()
  # Bits/dim of the full bound (eq. 5) on uint8 `split` images (10,000: the whole test set).
  evals.bpd = dict(type='bpd', every=0, train_examples=64, num_examples=10_000, batch_size=64,
                   clip_denoised=True, split='test')
  # FID / IS / KID of uint8 samples of `config.sample`'s sampler against the statistics of
  # `reference_split` (the paper: the training set), cached in the workdir; runs only when
  # `weights` is given: pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or an .npz).
  # `is_splits`: 10 as the original IS code (the DDPM paper's own code scores as 1 split).
  evals.inception = dict(type='inception', every=0, train_samples=2_000, num_samples=50_000,
                         weights='', batch_size=100, is_splits=10, reference_split='train',
                         reference_examples=50_000)
  # FD-FMNIST: the Fréchet distance in ddpm-jax's Fashion-MNIST classifier's features; runs
  # only on Fashion-MNIST at 32x32x1.
  evals.fd_fmnist = dict(type='fd_fmnist', every=0, train_samples=2_000, num_samples=50_000,
                         reference_split='train', reference_examples=50_000)
  # What every evaluator shares: the seed of its noise and samples; the `--mode=eval` job's
  # polling for new checkpoints, and how long it waits without one before it stops.
  config.eval = ev = ml_collections.ConfigDict()
  ev.seed = 1
  ev.poll_seconds = 60
  ev.timeout_seconds = 3_600

  return config
