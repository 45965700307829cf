"""``gather_predictions`` (mmclip4clip.engine.retrieval_loops) called
directly: every dataset sample once (its first occurrence), in dataset
order.

Across processes whose shards a distributed sampler padded, it runs end to
end in tests/tools/test_resume_and_determinism.py (dist_test.sh on an odd
test set against one process)."""
import torch
from mmengine.structures import BaseDataElement

from mmclip4clip.engine.retrieval_loops import gather_predictions

NUM_SAMPLES = 5


def sample(idx: int, rank: int) -> BaseDataElement:
    """A prediction of dataset sample ``idx`` made on ``rank``."""
    return BaseDataElement(sample_idx=idx, rank=rank,
                           video_emb=torch.full((2, ), float(idx)))


def test_one_process_keeps_first_occurrence_in_dataset_order():
    samples = [sample(i, rank=0) for i in (3, 0, 4, 1, 0, 2, 3)]
    samples[4].rank = samples[6].rank = 1  # the repeats
    out = gather_predictions(samples)
    assert [s.sample_idx for s in out] == list(range(NUM_SAMPLES))
    assert all(s.rank == 0 for s in out)
    assert out[3] is samples[0]
