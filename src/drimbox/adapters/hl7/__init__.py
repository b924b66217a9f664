"""HL7 v2 from the RIS: MLLP listener, ORU^R01 / MDM^T02 parsing, ACKs."""
