"""Clinical documents drimbox writes and reads: the DICOM KOS imaging manifest (XDS-I.b) and
IOCM rejection notes."""
