"""Synthetic patient histories: French patients, sites, DICOM studies, CDA reports, HL7 messages.

The ``drimbox synth`` command calls :func:`generate_history` (a multi-site history with its
manifest) and :func:`write_ct_study` (one large CT series for benchmarks).
"""

from drimbox.synth.generate import (
    CtExam,
    SynthManifest,
    generate_history,
    write_ct_exam,
    write_ct_study,
)

__all__ = ["CtExam", "SynthManifest", "generate_history", "write_ct_exam", "write_ct_study"]
