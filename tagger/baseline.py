"""The baseline every trained model is compared with: MFCC statistics + logistic regression.

MFCCs are the DCT of the very log-mels the CNN-RNN reads (librosa.feature.mfcc on the
cached windows), so both models see the same decoded audio. Per clip: the mean and standard
deviation over all its frames of 20 MFCCs and their deltas (80 numbers), standardised, then a
class-balanced multinomial logistic regression (scikit-learn).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

N_MFCC = 20


def mfcc_stats(windows: Sequence[torch.Tensor]) -> np.ndarray:
    """One clip's log-mel windows [(n_mels, frames)] -> (4 * N_MFCC,) statistics."""
    import librosa
    mfcc = np.concatenate([librosa.feature.mfcc(S=w.numpy(), n_mfcc=N_MFCC) for w in windows], axis=1)
    delta = librosa.feature.delta(mfcc, width=9)      # every clip has at least 41 frames
    return np.concatenate([mfcc.mean(1), mfcc.std(1), delta.mean(1), delta.std(1)])


def baseline_probabilities(train_mels: Sequence[Sequence[torch.Tensor]], train_labels: Sequence[int],
                           eval_mels: Sequence[Sequence[torch.Tensor]], n_classes: int,
                           seed: int = 0) -> np.ndarray:
    """Fit on the training clips; (n_eval, n_classes) probabilities for the others
    (0 for classes absent from training)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train = np.stack([mfcc_stats(w) for w in train_mels])
    x_eval = np.stack([mfcc_stats(w) for w in eval_mels])
    model = make_pipeline(StandardScaler(), LogisticRegression(
        C=0.1, max_iter=5000, class_weight="balanced", random_state=seed))
    model.fit(x_train, np.asarray(train_labels))
    probs = np.zeros((len(x_eval), n_classes))
    probs[:, model.classes_] = model.predict_proba(x_eval)
    return probs
