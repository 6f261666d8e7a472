r"""Throughput and memory benchmarks, each printed beside its goal as a ratio measured in the
same run. One module per benchmark; each runs alone or through the harness:

  python -m benchmarks.sampler                       # one benchmark
  python -m benchmarks --what=sampler,eval,learner   # several, in order

- sampler      the transition sampler (`scaled_ql.data.sampler`) and ingest from disk
- eval         evaluation rollouts with the greedy policy in the emulator
- learner      the update step's MFU on CPU, a real run's data wait, forced host devices
- replay       online fine-tuning's Reverb layer and the whole online loop
- online_backends  (run alone: needs a backbone) online fine-tuning's local and Reverb
               replays side by side: returns over seeds with CIs, env steps/s, updates/s
- accelerator  the paper's ResNets at batch 512 in bfloat16 on one accelerator, the sampler's
               rate per host core beside it, the greedy policy on the device (`--smoke`: the
               same code at tiny shapes, for a CPU dry run)

Shared pieces: `common` (timing, reports, configs, synthetic episodes), `flops` (model FLOPs
of an update from the network's layer shapes, matmul peak rates). Benchmarks import
`scaled_ql` only, never `launch` (the learner and replay benchmarks run launch apps as
subprocesses). Add one by writing a module with a `run()` and naming it in `NAMES`.
"""

# --what names, in the order `--what=all` runs them; each is a module of this package.
NAMES = ("sampler", "eval", "learner", "replay", "accelerator")
