"""Attack success rate of a backdoor, as an `evaluate` metric that loads offline from this folder.

import evaluate
from hf_fst.metrics import ASR_METRIC_PATH
asr = evaluate.load(str(ASR_METRIC_PATH))
asr.compute(predictions=[0, 0, 3], references=[0, 0, 0])  # {'attack_success_rate': 0.666...}
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Attack success rate (ASR): the share of triggered test images (every image whose true label is not the attack's
target, with the trigger applied) that the model classifies as the target. `references` are the target labels.
Pass `original_labels` to drop any image whose true label already equals its target (all-to-one attacks).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): target class id of each triggered image.
    original_labels (`list` of `int`, *optional*): true class ids; rows whose true label equals the target are
        left out.
Returns:
    attack_success_rate (`float`): in [0, 1].
"""

_CITATION = """
@inproceedings{min2023towards,
  title={Towards Stable Backdoor Purification through Feature Shift Tuning},
  author={Min, Rui and Qin, Zeyu and Shen, Li and Cheng, Minhao},
  booktitle={Advances in Neural Information Processing Systems},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AttackSuccessRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, original_labels=None):
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        if original_labels is not None:
            keep = np.asarray(original_labels, dtype=np.int64) != references
            predictions, references = predictions[keep], references[keep]
        if len(references) == 0:
            raise ValueError("references=: no triggered rows to score; the attack success rate is undefined")
        return {"attack_success_rate": float(np.mean(predictions == references))}
