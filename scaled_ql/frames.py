"""The shape of what every part of the pipeline sees: single 84x84 grayscale frames, stacked 4.

Defined once here, the lowest module, so the dataset formats, the sampler, the environments and
the networks cannot disagree. Sources: Mnih et al., Nature 2015 (84x84 frames, the last 4
stacked), the DQN Replay Dataset (single [84, 84] uint8 frames on disk).
"""
FRAME_SHAPE = (84, 84)  # (height, width) of one preprocessed grayscale frame, uint8.
STACK_SIZE = 4  # Frames per observation, oldest first.
OBSERVATION_SHAPE = (*FRAME_SHAPE, STACK_SIZE)  # One network input, channels last.
FRAME_BYTES = FRAME_SHAPE[0] * FRAME_SHAPE[1]  # 7,056 bytes per stored uint8 frame.
