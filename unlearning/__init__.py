"""Training (standard, adversarial) and unlearning (SISA, Amnesiac, retraining baseline)."""
