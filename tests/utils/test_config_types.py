"""type_name / of_type: a component found by its class name however its
``type`` is written (plain, scoped, the class itself)."""
from mmengine.config import ConfigDict

from mmclip4clip.datasets.transforms import TokenizeCaptions
from mmclip4clip.utils.config import of_type, type_name


def test_plain_scoped_and_class_types_give_the_class_name():
    assert type_name(dict(type='TokenizeCaptions')) == 'TokenizeCaptions'
    assert type_name(dict(type='mmclip4clip.TokenizeCaptions')) == \
        'TokenizeCaptions'
    assert type_name(ConfigDict(type=TokenizeCaptions)) == 'TokenizeCaptions'
    assert type_name(dict(ann_file='x.json')) is None
    assert type_name('TokenizeCaptions') is None  # not a config dict


def test_of_type_keeps_the_matching_dicts_in_order():
    steps = [dict(type='mmclip4clip.RetrievalMetric', k=1),
             dict(type='OtherMetric'), dict(type='RetrievalMetric', k=2)]
    assert of_type(steps, 'RetrievalMetric') == [steps[0], steps[2]]
    assert of_type(steps, 'Metric') == []
