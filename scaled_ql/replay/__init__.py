"""The Reverb layer of online fine-tuning: actors write n-step transitions, the learner samples.

    tables = replay.ReplayTables(max_size=1_000_000, min_size_to_sample=20_000,
                                 samples_per_insert=8.0, offline_size=500_000)
    with replay.start_server(tables=tables) as server:          # its own process
      replay.insert_episodes(server.address, "offline", read_episodes(...), game_id=0,
                             n_step=3, gamma=0.99)              # seed from a dataset
      # actors (any process):
      writer = replay.TransitionWriter(server.address, n_step=3, gamma=0.99, num_envs=8)
      writer.add(i, obs[i], action[i], reward[i], terminated[i], truncated[i],
                 info["next_observation"][i], game_id)          # per env step
      params, step = replay.ParamsClient(server.address, template).latest(wait=True)
      # learner:
      batches = replay.ReplayBatches(server.address, 256,
                                     tables_and_fractions={"offline": 0.25, "online": 0.75})
      update(state, next(batches), block_size=batches.block_size)
      replay.publish_params(server.address, state.params, step)

- `server`: `ReplayTables` (the "online", optional "offline" and "variables" tables, the
  transition signature), `start_server` / `ServerProcess` (`python -m scaled_ql.replay`),
  `check_address`, `checkpoint` (the tables' contents, restored by a server started on the
  same directory), `ReplayError`.
- `writer`: `TransitionWriter` (n-step transitions from interleaved env streams, exactly the
  targets of `scaled_ql.data.sampler.n_step_targets`), `insert_episodes` (RLDS episodes).
- `dataset`: `ReplayBatches`, fixed-size `scaled_ql.data.Batch`es mixed from tables in fixed
  row counts, through `reverb.TrajectoryDataset` and tf.data.
- `params`: `publish_params`, `fetch_params`, `ParamsClient`.
- `local`: `LocalReplay`, the in-process replay (no Reverb, no TensorFlow): the same
  transitions, from `scaled_ql.data.FramePool`s, for `config.online.replay = "local"`.

Names are resolved on first use, so `scaled_ql.replay.local` imports without Reverb.

Nothing here hangs on a dead server: every wait checks the server's port and ends in a
ReplayError naming the address (and table).
"""
from scaled_ql import _lazy

_EXPORTS = {
    "dataset": ("ReplayBatches", "split_fractions"),
    "params": ("ParamsClient", "fetch_params", "publish_params"),
    "server": ("OFFLINE", "ONLINE", "TRANSITION_FIELDS", "VARIABLES", "ReplayError",
               "ReplayTables", "ServerProcess", "check_address", "checkpoint", "server_info",
               "start_server", "transition_signature"),
    "writer": ("TransitionWriter", "insert_episodes", "n_step_return"),
    "local": ("LocalReplay",),
}
__getattr__, __dir__, __all__ = _lazy.exports(__name__, _EXPORTS)
