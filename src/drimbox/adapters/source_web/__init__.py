"""The Source box's WADO-RS/QIDO-RS endpoint for other boxes (DRIM-M, IHE RAD-107)."""
