"""The jobs that train: pre-training, offline and online fine-tuning, in one loop.

  loop       `train(config, workdir, hooks=...)`: checks, mesh, data, state (restored or
             initialised), the jitted update, the loop; `Hooks`/`BatchStream` protocols;
  offline    `OfflineData`: the offline sampler over config.data (the default hooks);
  online     `train_online`, `OnlineHooks`: Reverb replay server, actor processes, the learner;
  actor_pool the actor processes of an online run (start, watch, restart, stop);
  finetuning `finetune(config, workdir, backbone)`: heads and backbone from an exported artifact;
  periodic   evaluation during training;  metrics  progress bar, TensorBoard, metrics.jsonl.

`pretrain(config, workdir)` is the pre-training job. Library calls raise exceptions: bad input
is `scaled_ql.errors.InputError`, raised before long work starts.
"""
from scaled_ql.train.finetuning import finetune
from scaled_ql.train.loop import BatchStream, Hooks, Result, train
from scaled_ql.train.offline import OfflineData


def pretrain(config, workdir: str) -> Result:
  """Pre-trains config's multi-game Q-network on config.data in `workdir` (resumes there)."""
  return train(config, workdir, what="pre-training")


__all__ = ["BatchStream", "Hooks", "OfflineData", "Result", "finetune", "pretrain", "train"]
